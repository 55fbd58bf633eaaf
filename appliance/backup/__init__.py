"""Backups, restores and drills of a tenant: pgBackRest 2.45 into the tenant's own bucket, plus a sealed side
bundle of what the database does not hold, and drills that restore and compare instead of trusting.

- `paths`: where everything lives (tenant backup dir, spool, scratch, the root-only recovery keys).
- `pgbackrest`: the config file and the wrapper that gives pgBackRest the tenant's secrets through its
  environment, and running commands through it as the tenant's OS user.
- `stanza`: the host-side deploy step (`ensure_files`, `ensure_stanza`, `setup_ok`) and the recovery keys.
- `archive`: `archive_command(tenant)`, archiver status, and RPO measured from the WAL itself.
- `streams`, `sealed`, `bundle`: the Durable Streams snapshot, authenticated encryption, and the side bundle
  (secrets, rendered config, streams, agents' state) with its plain descriptor.
- `target`: `--time` parsing and which backup set reaches a point in time.
- `take`: a backup now (pgBackRest, then the bundle, then bundle expiry).
- `scratch`, `restore`: scratch instances on other ports/dirs, and restores into one or in place.
- `verify`, `drill`, `report`: `pgbackrest verify` read properly, the drill, and its JSON/summary report.
- `schedule`: cron schedules and the supervised scheduler (`backup_service`).
- `status`: `backup_status(tenant)` and `describe` for `appliance status` and `appliance backup status`.

Wiring into the deploy, per tenant, in this order:
1. after the tenant's secrets: `appliance backup setup <id> --files-only` (`stanza.ensure_files`): the config,
   the wrapper and the recovery keys, so that archive_command works from the first WAL segment;
2. postgresql.conf rendered with `archive_command=archive.archive_command(tenant)` (archive_mode needs a
   restart the first time: the existing postgres-reload step does it);
3. after the tenant's bucket and identity exist: `appliance backup setup <id>` (`stanza.ensure_stanza`,
   stanza-create once; `stanza.setup_ok` is the fact that makes a redeploy with nothing changed a no-op);
4. `schedule.backup_service(tenant)` installed like the other services, under supervisord or systemd (its first
   run takes a full backup when there is none).
"""
