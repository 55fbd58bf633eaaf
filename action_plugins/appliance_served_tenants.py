"""Ansible action, on a vault host: the identities and buckets of each tenant of another host, with that tenant's
current S3 keys. The keys were read on the tenant's host earlier in this run (the `tenant` role keeps them in
the controller's memory, `no_log`); here they go to the vault on the connection's stdin, into a root-only staging
file that `appliance host objectstore-tenant --keys-from` reads and removes, as pyinfra's relay does: never on
the controller's disk, never in a command line. A tenant whose current keys the vault holds (and whose buckets
answer them) is left alone."""

from __future__ import annotations

import json
import shlex
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from appliance.objectstore.credentials import TenantKeys, tenant_keys_from_json
from appliance.rotation.staged_keys import STAGED


def _pairs(keys: dict[str, Any]) -> TenantKeys:
    """The pairs of a tenant's keys as its host's `s3_keys` step read them (every value stripped)."""
    return tenant_keys_from_json({component: {name: str(value).strip() for name, value in pair.items()}
                                  for component, pair in keys.items() if component != STAGED})


class ActionModule(ActionBase):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance.host.objectstore import keys_digest
        from appliance.objectstore.credentials import PREVIOUS_KEY, tenant_keys_to_json
        from appliance.playbook import config_for

        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        config = config_for(task_vars)
        held = task_vars.get("appliance_facts", {}).get("host", {}).get("served_tenants", {})
        hostvars = task_vars["hostvars"]
        by_name = {str(hostvars[h].get("appliance_name") or h): h for h in task_vars["groups"]["all"]}
        staging_dir = config.common.config_dir / "staging"
        changed = []
        for served in config.served_tenants:
            tenant = served.tenant
            keys = hostvars[by_name[served.host]].get("appliance_s3_keys", {}).get(tenant.id)
            if not keys:
                raise AnsibleError(f"tenant {tenant.id} on {served.host} has no S3 keys yet (its host's part of "
                                   "this run must come first: run every host together)")
            try:
                current = _pairs(keys)
                # Pairs a rotation staged there go as the keys, the current ones beside them until the tenant host
                # uses the new ones (appliance.rotation.staged_keys).
                pairs, previous = (_pairs(keys[STAGED]), current) if keys.get(STAGED) else (current, None)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise AnsibleError(f"tenant {tenant.id} on {served.host} lacks some of its S3 keys (its host's part "
                                   "of this run must come first: run every host together)") from None
            digest = keys_digest(pairs, previous)
            current = held.get(tenant.id, {})
            if current.get("keys_sha256") == digest and current.get("ok"):
                continue
            changed.append(tenant.id)
            if self._play_context.check_mode:
                continue
            staging = staging_dir / f"{tenant.id}-s3.json"
            command = (f"install -d -m 700 -o root -g root {shlex.quote(str(staging_dir))} && "
                       f"umask 077 && cat > {shlex.quote(str(staging))} && "
                       f"{shlex.quote(task_vars['appliance']['appliance'])} host objectstore-tenant "
                       f"{shlex.quote(tenant.id)} --keys-from {shlex.quote(str(staging))}")
            body = {**tenant_keys_to_json(pairs),
                    **({PREVIOUS_KEY: tenant_keys_to_json(previous)} if previous else {})}
            answer = self._low_level_execute_command(command, in_data=json.dumps(body))
            if answer.get("rc") != 0:
                raise AnsibleError(f"keeping {tenant.id}'s buckets on this vault failed: "
                                   f"{str(answer.get('stderr', ''))[-2000:]}")
        result.update(changed=bool(changed), tenants=changed)
        return result
