"""The official Electric image as a tenant's sync runtime, where a Docker engine answers.

`sync.runtime: electric` (or `auto` on a host whose Docker engine answers) runs `electricsql/electric`
through the Docker SDK instead of the embedded engine. The container:
- publishes its port on 127.0.0.1 only (the tenant's sync port), never on a shared interface;
- keeps its shape storage in the tenant's sync dir (a bind mount), runs as the tenant's OS user;
- reaches the tenant's Postgres through the host gateway (`host.docker.internal`), so the cluster also
  listens on the Docker bridge's gateway address, for the sync role only (see `postgres_extra_listen`);
- gets DATABASE_URL and ELECTRIC_SECRET as container environment: readable by root through the engine,
  absent from the host's process listing;
- is replaced when its spec changes (a label carries the spec's digest), left alone otherwise.
"""

from __future__ import annotations

import hashlib
import json
import pwd
from typing import Any, Protocol
from urllib.parse import quote

from appliance.config import SyncRuntime, TenantConfig

CONTAINER_PORT = 3000
STORAGE_IN_CONTAINER = "/var/lib/electric/persistent"
DOCKER_HOST_GATEWAY = "host.docker.internal"


def container_name(tenant: TenantConfig) -> str:
    return f"appliance-{tenant.id}-sync"


def docker_engine_answers(timeout_s: float = 2.0) -> bool:
    """Whether a Docker engine answers here (the client alone, as on hosts without an engine, does not)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, permission, engine down: all mean "no engine to run the image"
        return False


def resolve_runtime(setting: SyncRuntime, engine_answers: bool) -> SyncRuntime:
    """`auto` picks the official image when a Docker engine answers, the embedded engine otherwise."""
    if setting is SyncRuntime.auto:
        return SyncRuntime.electric if engine_answers else SyncRuntime.embedded
    return setting


def database_url(tenant: TenantConfig, password: str, host: str = DOCKER_HOST_GATEWAY) -> str:
    return (
        f"postgresql://sync:{quote(password, safe='')}@{host}:{tenant.port('postgres')}/"
        f"{tenant.postgres.database}?sslmode=disable"
    )


def container_spec(tenant: TenantConfig, *, sync_password: str, secret: str, uid: int, gid: int) -> dict[str, Any]:
    """Keyword arguments for `docker.containers.run`, with a label holding the digest of everything else."""
    environment = {
        "DATABASE_URL": database_url(tenant, sync_password),
        "ELECTRIC_SECRET": secret,
        "ELECTRIC_PORT": str(CONTAINER_PORT),
        "ELECTRIC_STORAGE_DIR": STORAGE_IN_CONTAINER,
        "ELECTRIC_LONG_POLL_TIMEOUT": str(tenant.sync.long_poll_timeout_ms),
        # The same publication and slot names the embedded engine uses (Electric derives both from this id).
        "ELECTRIC_REPLICATION_STREAM_ID": "default",
        # A tenant's data plane phones nobody.
        "ELECTRIC_USAGE_REPORTING": "false",
    }
    spec: dict[str, Any] = {
        "image": tenant.sync.electric_image,
        "name": container_name(tenant),
        "detach": True,
        "environment": environment,
        "ports": {f"{CONTAINER_PORT}/tcp": (tenant.common.bind_address, tenant.port("sync"))},
        "volumes": {str(tenant.sync_data / "electric"): {"bind": STORAGE_IN_CONTAINER, "mode": "rw"}},
        "user": f"{uid}:{gid}",
        "extra_hosts": {DOCKER_HOST_GATEWAY: "host-gateway"},
        "restart_policy": {"Name": "unless-stopped"},
        "read_only": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,size=64m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "labels": {"appliance.tenant": tenant.id, "appliance.component": "sync"},
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    spec["labels"]["appliance.spec-sha256"] = digest
    return spec


def tenant_container_spec(tenant: TenantConfig) -> dict[str, Any]:
    """The spec with the tenant's own secrets and OS user (on the host, as root)."""
    user = pwd.getpwnam(tenant.user)
    return container_spec(
        tenant, sync_password=tenant.read_secret("db_sync_password"), secret=tenant.read_secret("sync_secret"),
        uid=user.pw_uid, gid=user.pw_gid,
    )


def postgres_extra_listen(bridge_gateway: str) -> dict[str, str]:
    """What the tenant's cluster adds when the official image syncs it: the bridge gateway address to listen
    on, and the only network (the bridge's) the sync role may come from."""
    return {"listen_address": bridge_gateway, "hba_network": f"{bridge_gateway}/16"}


def container_state(tenant: TenantConfig) -> tuple[bool, int | None, str]:
    """(running, pid, detail) of the tenant's Electric container, as the Docker engine reports it."""
    try:
        import docker
        from docker.errors import NotFound

        client = docker.from_env(timeout=3)
        try:
            container = client.containers.get(container_name(tenant))
        except NotFound:
            return False, None, f"container {container_name(tenant)} does not exist"
        finally:
            client.close()
    except Exception as exc:  # engine unreachable: say so, do not fail the whole status
        return False, None, f"Docker engine unreachable: {exc}"
    pid = container.attrs.get("State", {}).get("Pid") or None
    return container.status == "running", pid, f"container {container.name} {container.status}"


def container_ok(tenant: TenantConfig) -> bool:
    """The container runs the spec the tenant's settings and secrets give today."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            container = client.containers.get(container_name(tenant))
        finally:
            client.close()
    except Exception:
        return False
    wanted = tenant_container_spec(tenant)["labels"]["appliance.spec-sha256"]
    return container.status == "running" and container.labels.get("appliance.spec-sha256") == wanted


def run_tenant_container(tenant: TenantConfig) -> list[str]:
    import docker

    client = docker.from_env(timeout=30)
    try:
        return ensure_container(client, tenant_container_spec(tenant))
    finally:
        client.close()


class _Containers(Protocol):
    def get(self, name: str) -> Any: ...
    def run(self, **kwargs: Any) -> Any: ...


class _Client(Protocol):
    containers: _Containers


def ensure_container(client: _Client, spec: dict[str, Any]) -> list[str]:
    """Run the container when absent, replace it when its spec changed, start it when stopped."""
    from docker.errors import NotFound

    wanted = spec["labels"]["appliance.spec-sha256"]
    try:
        current = client.containers.get(spec["name"])
    except NotFound:
        client.containers.run(**spec)
        return [f"container {spec['name']} created"]
    if current.labels.get("appliance.spec-sha256") != wanted:
        current.remove(force=True)
        client.containers.run(**spec)
        return [f"container {spec['name']} replaced (its spec changed)"]
    if current.status != "running":
        current.start()
        return [f"container {spec['name']} started"]
    return []
