"""Ansible action (runs on the controller): the plan of this run for the current host, as pyinfra's deploy.py
decides it at its top (`appliance.playbook.plan`), from three facts the host is asked: its PID 1, whether a
Docker engine answers, and which users exist. Sets the fact `appliance`."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _requires_connection = True

    def _ask(self, command: str) -> str:
        answer = self._low_level_execute_command(command)
        return str(answer.get("stdout", "")).strip()

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance.config import ConfigError
        from appliance.playbook import plan

        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        init = self._ask("cat /proc/1/comm")
        docker = self._ask("docker version --format '{{.Server.Version}}' 2>/dev/null || true")
        accounts = {line.split(":")[0]: line.split(":") for line in self._ask("getent passwd").splitlines()
                    if line.count(":") >= 6}
        users = list(accounts)
        try:
            decided = plan(task_vars["hostvars"], list(task_vars["groups"]["all"]), task_vars["inventory_hostname"],
                           init_process=init, docker_version=docker, users=users,
                           only_tenants=self._task.args.get("only_tenants") or None)
        except ConfigError as exc:
            raise AnsibleError(f"appliance inventory: {exc}") from None
        # The state of every path the run manages, read once (a module per part would cost a Python start each).
        from appliance.config import HostConfig
        from appliance.playbook import all_parts, parse_path_states, parse_probes, path_states_command, probes_command

        config = HostConfig.model_validate_json(decided["config"])
        paths = [item.path for item in all_parts(config, decided["manager"], decided["tenants_with_users"],
                                                 decided["selected"])]
        decided["path_states"] = parse_path_states(paths, self._ask(path_states_command(paths)))
        decided["probe"] = parse_probes(self._ask(probes_command(decided)))
        # The appliance's own OS users as they are (home:shell), so an unchanged one costs no module run.
        decided["accounts"] = {user: f"{fields[5]}:{fields[6]}" for user, fields in accounts.items()
                               if user in decided["os_users"]}
        result.update(changed=False, ansible_facts={"appliance": decided})
        return result
