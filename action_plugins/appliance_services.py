"""Ansible action: supervised services of one part of the deploy, as pyinfra's `install_services` does it. Each
definition (unit or program file, `appliance.desired.service_definitions`) is written on the host; a new or
changed one is applied (supervisord: one `update` for the lot; systemd: each changed unit), the others are left
alone unless `restart_when` (a configuration they read changed); then the deploy waits until they answer
(`appliance host wait`). Args: components (list), tenant (optional), restart_when (bool)."""

from __future__ import annotations

import shlex
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _requires_connection = True

    def _run(self, command: str, what: str) -> None:
        answer = self._low_level_execute_command(command)
        if answer.get("rc") != 0:
            said = (str(answer.get("stderr", "")) + str(answer.get("stdout", "")))[-2000:]
            raise AnsibleError(f"{what}: `{command}` exited {answer.get('rc')}: {said}")

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance.config import ConfigError
        from appliance.playbook import bring_about, config_for, part

        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        decided = task_vars["appliance"]
        tenant = args.get("tenant") or None
        components = list(args.get("components") or [])
        try:
            items, extras = part(config_for(task_vars), decided["manager"], "services", tenant_id=tenant,
                                 components=components)
        except (ConfigError, ValueError, KeyError) as exc:
            raise AnsibleError(f"appliance_services: {exc}") from None
        result = bring_about(items, decided.get("path_states", {}), lambda args: self._execute_module(
            module_name="appliance_paths", module_args=args, task_vars=task_vars))
        if result.get("failed"):
            return result
        changed_units = set(result.get("changed_paths", []))
        services = extras["services"]
        applied = [s["name"] for s in services if s["unit"] in changed_units]
        restarted = ([s["name"] for s in services if s["unit"] not in changed_units]
                     if args.get("restart_when") else [])
        if not self._play_context.check_mode:
            if applied and decided["manager"] == "supervisor":
                self._run(extras["apply_all"], "start or update")
            elif applied:
                for service in services:
                    if service["name"] in applied:
                        self._run(service["apply"], f"start or restart {service['name']}")
            for service in services:
                if service["name"] in restarted:
                    self._run(service["restart"], f"restart {service['name']}")
            if applied or restarted:
                scope = f"--tenant {shlex.quote(tenant)} " if tenant else ""
                self._run(f"{shlex.quote(decided['appliance'])} host wait {scope}{' '.join(components)}",
                          "wait until they answer")
        result.update(changed=bool(applied or restarted), applied=applied, restarted=restarted)
        return result
