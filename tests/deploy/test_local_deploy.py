"""The embedded default deployed for real to @local: healthy, idempotent, and tenants isolated in the substrate.

These tests create real OS users, clusters and processes on this machine (root required). The first deploy
takes minutes on a fresh machine; reruns are no-ops.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from botocore.exceptions import ClientError

from appliance.config import (
    AUDIT_S3_KEYS,
    BACKUP_S3_KEYS,
    S3_KEY_PAIRS,
    TENANT_SECRETS,
    HostConfig,
    S3KeyPair,
    load_host_config,
)
from tests.support import isolation
from tests.support.deployment import (
    LOCAL_INVENTORY,
    changed_operation_names,
    changed_operations,
    deploy_or_fail,
    pids,
    status_json,
)
from tests.support.frontdoor import door_client

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]


def test_every_component_is_healthy(deployed: HostConfig) -> None:
    code, report = status_json()
    assert code == 0, report
    assert set(report["tenants"]) == {"acme", "globex"}
    for tenant in report["tenants"].values():
        expected = {"postgres", "sync", "streams", "gateway", "agents", "audit", "backup", "buckets"}
        assert expected <= set(tenant["components"])
        for name, component in tenant["components"].items():
            assert component["healthy"], (name, component)
            if name != "buckets":  # a probe of the store, not a process of the tenant's
                assert component["pid"] and component["uptime_s"] is not None, component
            if name not in ("buckets", "audit", "backup"):  # the shipper and the scheduler listen on nothing
                assert component["port"], component
    if deployed.runs_objectstore:
        assert report["host"]["components"]["objectstore"]["healthy"]


def test_redeploy_with_nothing_changed_changes_and_restarts_nothing(deployed: HostConfig) -> None:
    _, before = status_json()
    output = deploy_or_fail()
    _, after = status_json()
    assert changed_operations(output) == 0, changed_operation_names(output)
    assert pids(after) == pids(before)


def test_a_redeploy_with_nothing_changed_asks_the_host_three_times(deployed: HostConfig) -> None:
    """What keeps a no-op redeploy under 3 s (issue 21): the plan's facts, the host's report started early and one
    snapshot of everything the operations check (appliance/deploys/facts.py); an operation that asked the host
    on its own again would cost a process start and a round trip at every redeploy, or far more (pyinfra's
    Users fact took up to 0.8 s)."""
    output = deploy_or_fail(LOCAL_INVENTORY, "--debug")
    assert changed_operations(output) == 0, changed_operation_names(output)
    asked = re.findall(r"Getting fact: (\S+)", output)
    assert asked == ["appliance.deploys.facts.Batch", "appliance.deploys.facts.StartEarly",
                     "appliance.deploys.facts.Batch"], asked


def test_changing_one_setting_restarts_only_what_depends_on_it(deployed: HostConfig, tmp_path: Path) -> None:
    _, before = status_json()
    original = LOCAL_INVENTORY.read_text()
    # A setting Postgres applies on reload: no process restarts at all.
    reloadable = tmp_path / "reload.py"
    reloadable.write_text(
        original.replace(
            '"acme": {"slot": 1}', '"acme": {"slot": 1, "postgres": {"log_min_duration_statement_ms": 250}}'
        )
    )
    # A setting that needs a restart: only acme's postgres gets a new pid.
    restart = tmp_path / "restart.py"
    restart.write_text(
        original.replace('"acme": {"slot": 1}', '"acme": {"slot": 1, "postgres": {"max_connections": 90}}')
    )
    try:
        deploy_or_fail(reloadable)
        _, after_reload = status_json()
        assert pids(after_reload) == pids(before)
        with _superuser(deployed, "acme") as conn:
            assert conn.execute("show log_min_duration_statement").fetchone() == ("250ms",)

        deploy_or_fail(restart)
        _, after_restart = status_json()
        changed = {k for k, v in pids(after_restart).items() if v != pids(before)[k]}
        assert changed == {"acme/postgres"}
        with _superuser(deployed, "acme") as conn:
            assert conn.execute("show max_connections").fetchone() == ("90",)
    finally:
        deploy_or_fail()
    _, restored = status_json()
    with _superuser(deployed, "acme") as conn:
        assert conn.execute("show max_connections").fetchone() == ("100",)
    assert all(c["healthy"] for t in restored["tenants"].values() for c in t["components"].values())


def _superuser(host: HostConfig, tenant_id: str) -> psycopg.Connection:
    from appliance.pg import connect

    return connect(host.tenant(tenant_id), database="postgres")


# Isolation ---------------------------------------------------------------------------------------------------


def test_tenant_user_cannot_read_another_tenants_directory(deployed: HostConfig) -> None:
    isolation.cannot_read_directory(deployed.tenant("acme"), deployed.tenant("globex"))


def test_one_tenants_db_credentials_are_refused_by_anothers_cluster(deployed: HostConfig) -> None:
    isolation.database_credentials_refused(deployed.tenant("acme"), deployed.tenant("globex"))


def test_superuser_cannot_log_in_over_tcp_without_its_secret(deployed: HostConfig) -> None:
    acme = deployed.tenant("acme")
    info = acme.pg_conninfo("postgres", database="postgres")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**info, password="postgres", connect_timeout=5)


def test_a_tenant_user_cannot_even_connect_to_another_tenants_private_ports(deployed: HostConfig) -> None:
    if not deployed.common.port_firewall:
        pytest.skip("port firewall disabled")
    isolation.private_ports_refused(deployed.tenant("acme"), deployed.tenant("globex"))


def _listeners() -> list[tuple[str, str, int]]:
    """(local address, user, pid) of every listening TCP socket on the machine."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    result = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        for pid in re.findall(r"pid=(\d+)", line):
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except FileNotFoundError:
                continue
            import pwd

            result.append((local, pwd.getpwuid(uid).pw_name, int(pid)))
    return result


def test_no_tenant_service_listens_on_a_non_loopback_address(deployed: HostConfig) -> None:
    owners = {t.user for t in deployed.tenants} | {deployed.objectstore_user}
    ours = [(addr, user) for addr, user, _ in _listeners() if user in owners]
    assert ours, "no listening sockets found for tenant services"
    exposed = [(addr, user) for addr, user in ours if not (addr.startswith("127.0.0.1:") or addr.startswith("[::1]:"))]
    assert not exposed


# Who may read each secret file, written out (appliance.secrets.SECRET_READERS is the deploy's table): its owner,
# and the group that reads it too (None: 0600). The tenant's user (the cluster's owner and the backup) is in the
# groups of the dirs it backs up (the agents' and the streams'), and no secret is readable through those; nobody
# else is in another's group.
SECRET_FILES = {
    "db_superuser_password": ("tenant", None),
    "db_gateway_password": ("gw", None),
    "db_sync_password": ("sync", None),
    "db_audit_password": ("audit", None),
    "db_identity_password": ("idp", None),
    "sync_secret": ("gw", "sync"),
    "agents_internal_token": ("agent", "gw"),
    "jwt_signing_key": ("gw", None),
    "secrets_encryption_key": ("gw", None),
    "backup_cipher_passphrase": ("tenant", None),
    "s3_access_key": ("audit", None),
    "s3_secret_key": ("audit", None),
    "backup_s3_access_key": ("tenant", None),
    "backup_s3_secret_key": ("tenant", None),
    "identity_jwks": ("idp", None),
    "identity_cookie_keys": ("idp", None),
    "identity_gateway_client_secret": ("gw", "idp"),
}
BACKED_UP = {"agent", "strm"}  # the groups the tenant's user is in


def test_each_secret_file_is_readable_by_its_readers_only(deployed: HostConfig) -> None:
    import grp
    import pwd

    assert set(SECRET_FILES) == set(TENANT_SECRETS)
    for tenant in deployed.tenants:
        names = {"tenant": tenant.user, **{u.rsplit("-", 1)[1]: u for u in tenant.own_users.values()}}
        for user in tenant.own_users.values():
            backed_up = user.rsplit("-", 1)[1] in BACKED_UP
            assert set(grp.getgrnam(user).gr_mem) == ({tenant.user} if backed_up else set()), user
        assert set(grp.getgrnam(tenant.user).gr_mem) == set(tenant.own_users.values())
        assert stat.S_IMODE(tenant.secrets_dir.stat().st_mode) == 0o710
        for name, (owner, group) in SECRET_FILES.items():
            st = tenant.secret_path(name).stat()
            assert stat.S_IMODE(st.st_mode) == (0o640 if group else 0o600), name
            assert pwd.getpwuid(st.st_uid).pw_name == names[owner], name
            assert grp.getgrgid(st.st_gid).gr_name == names[group or owner], name


def _secret_values(host: HostConfig) -> dict[str, str]:
    values = {}
    for tenant in host.tenants:
        for name in TENANT_SECRETS:
            value = tenant.read_secret(name)
            # PEM keys: their base64 body lines are the secret part
            for part in value.splitlines():
                if len(part) >= 16 and not part.startswith("-----"):
                    values[f"{tenant.id}/{name}"] = part
    return values


def test_secrets_never_appear_in_process_listings(deployed: HostConfig) -> None:
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "user:32,pid,args", "--no-headers"], capture_output=True, text=True
    ).stdout
    assert "tenant-acme" in listing or "postgres -D /srv/appliance/tenants/acme" in listing
    leaked = [name for name, value in _secret_values(deployed).items() if value in listing]
    assert not leaked


def test_secrets_never_appear_in_logs_configs_or_inventory(deployed: HostConfig) -> None:
    places: list[Path] = [LOCAL_INVENTORY, deployed.host_file]
    for tenant in deployed.tenants:
        places.extend(p for p in tenant.logs_dir.rglob("*") if p.is_file())
        places.extend(tenant.pg_data.glob("*.conf"))
    places.extend(p for p in Path("/etc/supervisor/conf.d").glob("appliance-*.conf"))
    places.extend(p for p in Path("/var/log/supervisor").glob("*") if p.is_file())
    texts = {p: p.read_bytes().decode(errors="replace") for p in places}
    assert any(texts.values())
    leaks = [
        (str(p), name) for p, text in texts.items() for name, value in _secret_values(deployed).items() if value in text
    ]
    assert not leaks


def test_streams_server_refuses_the_upstream_fault_injection_route(deployed: HostConfig) -> None:
    import httpx

    acme = deployed.tenant("acme")
    response = httpx.post(f"http://127.0.0.1:{acme.port('streams')}/_test/inject-error", json={}, timeout=5)
    assert response.status_code == 404


def test_streams_are_file_backed_in_the_tenant_dir(deployed: HostConfig) -> None:
    import httpx

    acme = deployed.tenant("acme")
    base = f"http://127.0.0.1:{acme.port('streams')}"
    name = f"deploy-test-{os.getpid()}"
    created = httpx.put(f"{base}/{name}", headers={"content-type": "application/json"}, timeout=5)
    assert created.status_code in (200, 201)
    httpx.post(f"{base}/{name}", json={"hello": "acme"}, timeout=5).raise_for_status()
    assert any(acme.streams_data.rglob("*")), "no files in the tenant's streams dir"
    httpx.delete(f"{base}/{name}", timeout=5)


def test_tenant_ports_are_reachable_only_on_loopback(deployed: HostConfig) -> None:
    acme = deployed.tenant("acme")
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in addresses:
        with pytest.raises(OSError), socket.create_connection((address, acme.port("postgres")), timeout=2):
            pass


# Object store ------------------------------------------------------------------------------------------------


def _tenant_s3(host: HostConfig, tenant_id: str, pair: S3KeyPair = AUDIT_S3_KEYS):  # type: ignore[no-untyped-def]
    return isolation.tenant_s3(host, host.tenant(tenant_id), pair)


def test_one_tenants_s3_keys_cannot_list_or_read_anothers_buckets(deployed: HostConfig) -> None:
    isolation.s3_keys_refused(deployed, deployed.tenant("acme"), deployed.tenant("globex"))


def test_a_locked_audit_object_cannot_be_deleted_with_the_tenants_own_keys(deployed: HostConfig) -> None:
    from botocore.exceptions import ClientError

    from appliance.objectstore.client import put_object

    acme = deployed.tenant("acme")
    s3 = _tenant_s3(deployed, "acme")
    key = f"deploy-tests/lock-probe-{os.getpid()}"
    version = put_object(s3, acme.audit_bucket, key, b"evidence")["VersionId"]
    retention = s3.get_object_retention(Bucket=acme.audit_bucket, Key=key, VersionId=version)["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as denied:
        s3.delete_object(Bucket=acme.audit_bucket, Key=key, VersionId=version)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # Nor with the backup's, which cannot touch the audit bucket at all.
    with pytest.raises(ClientError) as denied:
        _tenant_s3(deployed, "acme", BACKUP_S3_KEYS).delete_object(Bucket=acme.audit_bucket, Key=key, VersionId=version)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket=acme.audit_bucket, Key=key, VersionId=version)["Body"].read() == b"evidence"


def test_the_store_serves_s3_over_tls_only(deployed: HostConfig) -> None:
    import httpx

    if not deployed.runs_objectstore:
        pytest.skip("no embedded store on this host")
    plain = httpx.get(f"http://127.0.0.1:{deployed.objectstore.s3_port}/", timeout=5)
    assert plain.status_code == 400 and "HTTPS" in plain.text


# Lifecycle ---------------------------------------------------------------------------------------------------


def test_a_tenant_can_be_added_alone_destroyed_and_its_id_is_not_reused(deployed: HostConfig, tmp_path: Path) -> None:
    import pwd

    from tests.support.deployment import BIN

    # A fresh id per run: a destroyed tenant's audit trail stays locked (1 day here) and blocks its id.
    tenant_id = f"gamma{os.getpid()}"
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        LOCAL_INVENTORY.read_text().replace(
            '"globex": {"slot": 2},',
            f'"globex": {{"slot": 2}}, "{tenant_id}": {{"slot": 8, "audit": {{"retention_days": 1}}}},',
        )
    )
    destroy = [str(BIN / "appliance"), "tenant", "destroy", tenant_id]
    _, before = status_json()
    try:
        deploy_or_fail(inventory, "--data", f"only_tenants={tenant_id}")
        code, report = status_json()
        assert code == 0
        assert all(c["healthy"] for c in report["tenants"][tenant_id]["components"].values())
        # adding the tenant touched neither acme nor globex
        assert {k: v for k, v in pids(report).items() if not k.startswith(f"{tenant_id}/")} == pids(before)

        host = load_host_config()
        gamma = host.tenant(tenant_id)
        # The front door routes the new tenant's name to it (reloaded for it, not restarted: pids above).
        with door_client(host, gamma.hostnames[0]) as door:
            assert door.get("/healthz").status_code == 200
        refused = subprocess.run(destroy, capture_output=True, text=True)
        assert refused.returncode == 2 and "--yes-destroy-data" in refused.stderr
        assert gamma.root.exists()
        from appliance.objectstore.credentials import tenant_keys

        keys = tenant_keys(gamma)  # both pairs, to prove the store refuses each after the destroy

        destroyed = subprocess.run([*destroy, "--yes-destroy-data"], capture_output=True, text=True)
        assert destroyed.returncode == 0, destroyed.stderr
        assert "tenant_destroy recorded" in destroyed.stdout and "shipped" in destroyed.stdout
        assert "COMPLIANCE" in destroyed.stdout
        assert "nobody, the operator included, can delete them" in destroyed.stdout
        assert not gamma.root.exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(gamma.user)
        code, report = status_json()
        assert code == 0 and tenant_id not in report["tenants"]
        # Both of its store identities are revoked (weed restarted: SIGHUP would keep them).
        from appliance.objectstore import seaweed
        from appliance.objectstore.client import s3_client
        from appliance.objectstore.paths import store_paths

        names = {i["name"] for i in json.loads(store_paths(host).s3_config.read_text())["identities"]}
        assert not {seaweed.tenant_identity_name(tenant_id, pair) for pair in S3_KEY_PAIRS} & names
        for pair in S3_KEY_PAIRS:
            with pytest.raises(ClientError) as revoked:
                s3_client(host, keys[pair.component], retries=1).head_bucket(Bucket=pair.bucket(gamma))
            assert revoked.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, pair
        # Nor does the front door know it any more: its name is an unknown name, its certificate and socket gone.
        assert f"no longer routes {gamma.hostnames[0]}" in destroyed.stdout
        with door_client(host, gamma.hostnames[0]) as door, pytest.raises(httpx.ConnectError):
            door.get("/healthz")  # the certificate for an unknown name names no tenant: verification fails
        assert not any(path.exists() for path in host.frontdoor_cert(gamma))
        assert not gamma.gateway_socket.parent.exists()

        # The locked trail keeps the id: a new tenant under it is refused, plainly.
        from tests.support.deployment import pyinfra_deploy

        again = pyinfra_deploy(inventory, "--data", f"only_tenants={tenant_id}")
        output = again.stdout + again.stderr
        assert again.returncode != 0
        assert "belonged to an earlier tenant whose trail stays locked" in output
    finally:
        subprocess.run([*destroy, "--yes-destroy-data", "--skip-audit-ship"], capture_output=True)
        deploy_or_fail()


def test_destroy_of_an_unknown_tenant_is_a_clear_error(deployed: HostConfig) -> None:
    from tests.support.deployment import BIN

    result = subprocess.run(
        [str(BIN / "appliance"), "tenant", "destroy", "nosuch", "--yes-destroy-data"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "no tenant 'nosuch'" in result.stderr


# The product through the deployed stack ----------------------------------------------------------------------


def test_a_mention_through_the_deployed_gateway_gets_the_echo_agents_reply(deployed: HostConfig) -> None:
    import time
    import uuid

    import httpx

    from tests.support.deployment import BIN

    subject = str(uuid.uuid4())
    token = subprocess.run(
        [str(BIN / "appliance"), "token", "issue", "acme", "--subject", subject],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    gateway = f"http://127.0.0.1:{deployed.tenant('acme').port('gateway')}"
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        house = api.post("/api/houses", json={"name": "deploy test"}).json()["data"]["id"]
        assert api.post("/api/agents", json={"house_id": house, "name": "echo", "handler": "echo"}).status_code == 201
        thread = api.post("/api/threads", json={"house_id": house, "title": "t"}).json()["data"]["id"]
        entry = str(uuid.uuid4())
        assert api.post(f"/api/threads/{thread}/entries", json={"id": entry, "text": "ping @echo"}).status_code == 201
        deadline = time.monotonic() + 15
        replies: list[dict[str, object]] = []
        while time.monotonic() < deadline and not replies:
            messages = api.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}).json()
            replies = [m for m in messages if m.get("reply_to") == entry]
            time.sleep(0.2)
        assert len(replies) == 1 and replies[0]["author"]["kind"] == "agent"  # type: ignore[index]
        # another tenant's gateway refuses acme's token
        other = f"http://127.0.0.1:{deployed.tenant('globex').port('gateway')}"
        assert httpx.get(f"{other}/api/threads/{thread}/stream", headers=api.headers, timeout=10).status_code == 401


def test_emptying_a_bucket_that_was_never_made_says_so(deployed: HostConfig) -> None:
    """`tenant destroy` of a tenant whose first deploy failed before its buckets existed: no traceback."""
    from appliance.host.objectstore import empty_bucket

    assert empty_bucket(deployed, f"never-{uuid.uuid4().hex[:12]}-backup") is None
