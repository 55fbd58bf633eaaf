"""Ansible action (runs on the controller): the plan of this run for the current host, as pyinfra's deploy.py
decides it at its top (`appliance.playbook.plan`), from three facts the host is asked in one command: its PID 1,
whether a Docker engine answers, and which users exist. Sets the fact `appliance`.

Like pyinfra, it then starts the host's own report (`appliance host facts`: a Python start and a round of Postgres
logins and S3 requests there, about a second) in the background on the host, and reads every managed path's state
and the bootstrap's probes in the same round trip; the common role collects the report once the bootstrap is
checked (`appliance.facts_early`), or asks again if the bootstrap changed the host."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

# Separates the answers of one command's parts (none of them prints it).
_MARK = "@@appliance-plan@@"


class ActionModule(ActionBase):
    _requires_connection = True

    def _ask(self, *commands: str) -> list[str]:
        """Each command's stdout, from one round trip (they run in order)."""
        joined = f"; echo {_MARK}; ".join(f"{{ {command}\n}}" for command in commands)
        # Not "sudoable": over SSH that asks for a pseudo-terminal (-tt), which turns every "\n" of the answer
        # into "\r\n" and so hides the marks (nothing here needs become).
        answer = self._low_level_execute_command(joined, sudoable=False)
        parts = str(answer.get("stdout", "")).split(_MARK + "\n")
        if len(parts) != len(commands):
            raise AnsibleError(f"appliance_plan: {len(commands)} questions, {len(parts)} answers (exit "
                               f"{answer.get('rc')}): {str(answer.get('stderr', ''))[-2000:]}")
        return parts

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from appliance import install_steps
        from appliance.config import ConfigError, HostConfig
        from appliance.playbook import (
            all_parts,
            parse_path_states,
            parse_probes,
            path_states_command,
            plan,
            probes_command,
        )

        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        init, docker, passwd = self._ask(
            "cat /proc/1/comm", "docker version --format '{{.Server.Version}}' 2>/dev/null || true", "getent passwd")
        accounts = {line.split(":")[0]: line.split(":") for line in passwd.splitlines() if line.count(":") >= 6}
        try:
            decided = plan(task_vars["hostvars"], list(task_vars["groups"]["all"]), task_vars["inventory_hostname"],
                           init_process=init.strip(), docker_version=docker.strip(), users=list(accounts),
                           only_tenants=self._task.args.get("only_tenants") or None)
        except ConfigError as exc:
            raise AnsibleError(f"appliance inventory: {exc}") from None
        config = HostConfig.model_validate_json(decided["config"])
        paths = [item.path for item in all_parts(config, decided["manager"], decided["tenants_with_users"],
                                                 decided["selected"])]
        # The host's report first, in the background, then (while it runs) the state of every path the run
        # manages and what the bootstrap's steps would ask: one round trip, read once as pyinfra reads them.
        early, states, probes = self._ask(install_steps.start_early_command([decided["facts_command"]]),
                                          path_states_command(paths), probes_command(decided))
        decided["facts_early"] = install_steps.early_directory(early)
        decided["path_states"] = parse_path_states(paths, states)
        decided["probe"] = parse_probes(probes)
        # The appliance's own OS users as they are (home:shell), so an unchanged one costs no module run.
        decided["accounts"] = {user: f"{fields[5]}:{fields[6]}" for user, fields in accounts.items()
                               if user in decided["os_users"]}
        result.update(changed=False, ansible_facts={"appliance": decided})
        return result
