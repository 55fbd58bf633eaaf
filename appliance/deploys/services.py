"""Installing service specs into the host's service manager: unit/program file → apply → health wait."""

from __future__ import annotations

import shlex

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from appliance import desired
from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import host_command
from appliance.deploys.managed import apply_desired
from appliance.servicespec import ServiceSpec
from appliance.supervision import ManagerName, manager


def install_components(config: HostConfig, manager_name: ManagerName, tenant: TenantConfig, *components: str,
                       restart_if: list[OperationMeta] | None = None) -> list[OperationMeta]:
    """`install_services` for some of a tenant's services, named by component, as `tenant_services` defines them."""
    specs = desired.tenant_service_specs(config, tenant, components)
    return install_services(config, manager_name, specs, tenant=tenant.id, restart_if=restart_if)


def install_services(
    config: HostConfig,
    manager_name: ManagerName,
    specs: list[ServiceSpec],
    *,
    tenant: str | None,
    restart_if: list[OperationMeta] | None = None,
) -> list[OperationMeta]:
    """Write each spec's unit/program file; apply (start new, restart changed) and wait until healthy.

    Only services whose own file changed restart; `restart_if` lists other operations (config files the
    services read) whose change also restarts them.
    """
    mgr = manager(manager_name)
    file_ops = apply_desired(desired.service_definitions(manager_name, specs))
    if mgr.name == "systemd":
        # One unit at a time, each when its own file changed (systemctl has no "apply what changed").
        applies = [
            server.shell(name=f"Start or restart {spec.name}", commands=[shlex.join(mgr.apply_command([spec]))],
                         _if=lambda file_op=file_op: file_op.did_change())
            for spec, file_op in zip(specs, file_ops, strict=True)
        ]
    else:
        # `supervisorctl update` adds new programs and restarts only those whose program file changed.
        applies = [server.shell(
            name=f"Start or update {', '.join(s.component for s in specs)}" + (f" of {tenant}" if tenant else ""),
            commands=[shlex.join(mgr.apply_command(specs))],
            _if=lambda: any(op.did_change() for op in file_ops),
        )]
    restart_ops = []
    for spec, file_op in zip(specs, file_ops, strict=True):
        if restart_if:
            restart_ops.append(
                server.shell(
                    name=f"Restart {spec.name} (its configuration changed)",
                    commands=[shlex.join(mgr.restart_command(spec))],
                    _if=lambda file_op=file_op: not file_op.did_change()
                    and any(op.did_change() for op in restart_if),
                )
            )
    scope = ["--tenant", tenant] if tenant else []
    server.shell(
        name=f"Wait until {', '.join(s.component for s in specs)} answer" + (f" ({tenant})" if tenant else ""),
        commands=[host_command(config, "wait", *scope, *(s.component for s in specs))],
        _if=lambda: any(op.did_change() for op in [*applies, *restart_ops]),
    )
    return [*applies, *file_ops, *restart_ops]
