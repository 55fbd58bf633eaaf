"""Ansible action: one part of the deploy's managed directories and files (`appliance.playbook.part`, the same
lists pyinfra applies), computed here on the controller from the run's plan and brought about on the host by
the `appliance_paths` module. Returns what changed, and what the tasks around it need (services' commands)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance.config import ConfigError
        from appliance.playbook import bring_about, config_for, part

        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        decided = task_vars["appliance"]
        # The firewall names the users that exist when it is written (tenants made earlier in this run too).
        users = None
        if args.get("part") == "firewall":
            users = str(self._low_level_execute_command("getent passwd | cut -d: -f1").get("stdout", "")).split()
        try:
            items, extras = part(config_for(task_vars), decided["manager"], str(args["part"]),
                                 tenant_id=args.get("tenant"), components=list(args.get("components") or []),
                                 tenants_with_users=decided["tenants_with_users"], users=users)
        except (ConfigError, ValueError, KeyError) as exc:
            raise AnsibleError(f"appliance_desired: {exc}") from None
        result = bring_about(items, decided.get("path_states", {}), lambda args: self._execute_module(
            module_name="appliance_paths", module_args=args, task_vars=task_vars))
        result.update(extras)
        return result
