"""`appliance secret rotate` on the deployed embedded default, under live load through the gateway: every secret
replaced, only its readers restarted, the old value refused, no acknowledged write lost, failed requests only
while a component on the request path restarts, and the audit trail still verifying."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from botocore.exceptions import ClientError

from appliance.config import S3_KEY_PAIRS, HostConfig, TenantConfig
from appliance.rotation.plan import ROTATIONS
from tests.support.deployment import BIN, changed_operations, pids, status_json
from tests.support.frontdoor import issue_token

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

TENANT = "globex"
# Components a request of the load below passes through: a restart of one of them may fail requests while it
# lasts (the stated window); a rotation restarting none of them must fail none.
ON_REQUEST_PATH = {"gateway", "sync", "streams", "postgres"}


def appliance(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "appliance"), *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Load:
    """Entries appended to one thread and shape snapshots taken, back to back, through the gateway's port."""

    base: str
    token: str
    thread: str
    # Seconds between rounds (an append and a shape GET): under the principal's rate limit, which would
    # otherwise answer 429 for reasons of its own.
    pause_s: float
    acknowledged: list[str] = field(default_factory=list)
    failed: list[tuple[float, str, str]] = field(default_factory=list)  # (when, what, why)
    unacknowledged: list[str] = field(default_factory=list)
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as api:
            while not self.stop.is_set():
                entry = str(uuid.uuid4())
                self._call("append", lambda e=entry: api.post(f"/api/threads/{self.thread}/entries",
                                                              json={"id": e, "text": "load"}), entry)
                self._call("shape", lambda: api.get("/api/shapes/threads", params={"offset": "-1"}))
                time.sleep(self.pause_s)

    def _call(self, what: str, send: Any, entry: str | None = None) -> None:
        self.requests += 1
        try:
            response = send()
            ok = response.status_code < 300
            why = f"{response.status_code} {response.text[:120]}"
        except httpx.HTTPError as exc:
            ok, why = False, type(exc).__name__
        if ok and entry:
            self.acknowledged.append(entry)
        elif not ok:
            self.failed.append((time.monotonic(), what, why))
            if entry:
                self.unacknowledged.append(entry)


def _old_refused(host: HostConfig, tenant: TenantConfig, name: str, old: str) -> None:
    """The value a rotation replaced is refused where it used to be accepted."""
    if name.startswith("db_"):
        role = "postgres" if name == "db_superuser_password" else name[3:-9]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**tenant.pg_conninfo(role, database="postgres"), password=old, connect_timeout=5)
    elif name == "sync_secret":
        response = httpx.get(f"http://127.0.0.1:{tenant.port('sync')}/v1/shape",
                             params={"table": "threads", "offset": "-1", "secret": old}, timeout=10)
        assert response.status_code == 401, response.text
    elif name == "agents_internal_token":
        response = httpx.post(f"http://127.0.0.1:{tenant.port('agents')}/activate/{uuid.uuid4()}", json={},
                              headers={"Authorization": f"Bearer {old}"}, timeout=10)
        assert response.status_code == 401, response.text
    elif name == "backup_cipher_passphrase":
        # The new repository generation does not open with it (the kept one still does, for restores, until it
        # is retired: tests/deploy/test_backup_cipher.py).
        from appliance.backup import generations
        from tests.support.backup import passphrase_opens

        assert not passphrase_opens(tenant, generations.repo_path(generations.current(tenant)), old)
    elif any(name in pair.files for pair in S3_KEY_PAIRS):
        # Either pair, either half: the old value with the current other half is refused on the pair's bucket.
        from appliance.objectstore.client import s3_client
        from appliance.objectstore.credentials import S3Credentials

        pair = next(p for p in S3_KEY_PAIRS if name in p.files)
        access = old if name == pair.access_key else tenant.read_secret(pair.access_key)
        secret = old if name == pair.secret_key else tenant.read_secret(pair.secret_key)
        s3 = s3_client(host, S3Credentials(access, secret), retries=1)
        with pytest.raises(ClientError):
            s3.list_objects_v2(Bucket=pair.bucket(tenant), MaxKeys=1)


def test_every_secret_rotates_under_load_and_the_old_value_is_refused(deployed: HostConfig) -> None:
    tenant = deployed.tenant(TENANT)
    subject = str(uuid.uuid4())
    token = issue_token(TENANT, subject)
    base = f"http://127.0.0.1:{tenant.port('gateway')}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        house = api.post("/api/houses", json={"name": "rotation"}).json()["data"]["id"]
        thread = api.post("/api/threads", json={"house_id": house, "title": "t"}).json()["data"]["id"]
        sealed = api.post("/api/secrets", json={"house_id": house, "name": "K", "value": "v"})
        assert sealed.status_code == 201, sealed.text
    load = Load(base, token, thread, pause_s=2 * 60 / (0.7 * tenant.gateway.rate_limit_per_minute))
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    windows: dict[str, tuple[float, float, set[str]]] = {}
    try:
        time.sleep(1)
        for rotation in ROTATIONS.values():
            if rotation.how == "refused":
                continue
            olds = {n: tenant.read_secret(n) for n in rotation.secret_files}
            before = pids(status_json()[1])
            started = time.monotonic()
            result = appliance("secret", "rotate", TENANT, rotation.name)
            windows[rotation.name] = (started, time.monotonic(), set(rotation.restarts))
            assert result.returncode == 0, result.stdout + result.stderr
            for name, old in olds.items():
                assert tenant.read_secret(name) != old, f"{name} kept its value"
                assert old not in result.stdout + result.stderr
                _old_refused(deployed, tenant, name, old)
            # Only its readers restarted (jwt_signing_key: none; identity_jwks: the provider).
            after = pids(status_json()[1])
            moved = {name for name in before if before[name] != after.get(name)}
            expected = {f"{TENANT}/{c}" for c in rotation.restarts}
            if rotation.how == "identity_jwks" and not tenant.identity.embedded:
                expected = set()
            assert moved <= expected, f"{rotation.name} restarted {moved - expected} too"
        time.sleep(1)
    finally:
        load.stop.set()
        worker.join(timeout=30)
    assert load.requests > 200 and load.acknowledged
    for when, what, why in load.failed:
        inside = [name for name, (start, end, restarts) in windows.items() if start <= when <= end]
        assert inside, f"a {what} failed outside every rotation ({why})"
        assert any(windows[name][2] & ON_REQUEST_PATH for name in inside), (
            f"a {what} failed during {inside}, which restart nothing it passes through ({why})")
    # Nothing acknowledged is lost; what failed in a window is accepted when sent again with its id.
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        for entry in load.unacknowledged:
            assert api.post(f"/api/threads/{thread}/entries", json={"id": entry, "text": "load"}).status_code < 300
        stream = api.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}).json()
    ids = [m["id"] for m in stream]
    assert set(load.acknowledged) | set(load.unacknowledged) <= set(ids)
    assert len(ids) == len(set(ids)), "an entry was appended twice"
    verify = appliance("audit", "verify", TENANT)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Nothing a rotation leaves behind for the next deploy to put right (the recovery keys' copy included).
    from tests.support.deployment import changed_operation_names, deploy_or_fail

    redeploy = deploy_or_fail()
    assert changed_operations(redeploy) == 0, changed_operation_names(redeploy)
    failed_in = {name: [f for f in load.failed if start <= f[0] <= end] for name, (start, end, _) in windows.items()}

    def summary(name: str, seconds: float) -> str:
        kinds = sorted({f"{what} {why[:3]}" for _, what, why in failed_in[name]})
        return f"{name} {seconds:.1f}s {len(failed_in[name])}" + (f" ({', '.join(kinds)})" if kinds else "")

    print(f"{load.requests} requests, {len(load.failed)} failed; per rotation (command time, failed requests): "
          + "; ".join(summary(n, e - s) for n, (s, e, _) in windows.items()))


def test_rotate_refuses_bad_input_and_changes_nothing(deployed: HostConfig) -> None:
    tenant = deployed.tenant(TENANT)
    before = {name: tenant.read_secret(name) for rotation in ROTATIONS.values() for name in rotation.secret_files}
    unknown_tenant = appliance("secret", "rotate", "nosuchtenant", "sync_secret")
    assert unknown_tenant.returncode == 2 and "nosuchtenant" in unknown_tenant.stderr
    unknown_secret = appliance("secret", "rotate", TENANT, "root_password")
    assert unknown_secret.returncode == 2 and "unknown secrets ['root_password']" in unknown_secret.stderr
    assert appliance("secret", "rotate", TENANT).returncode == 2
    assert appliance("secret", "rotate", TENANT, "sync_secret", "--all").returncode == 2
    after = {name: tenant.read_secret(name) for name in before}
    assert after == before
    listing = appliance("secret", "list", TENANT)
    assert listing.returncode == 0
    assert all(value not in listing.stdout for value in before.values())
    assert "backup_cipher_passphrase" in listing.stdout


def test_every_secret_file_has_exactly_one_rotation() -> None:
    """A new secret needs its rotation: each file belongs to one, and a rotation names no file that is not one."""
    from appliance.config import TENANT_SECRETS

    files = [name for rotation in ROTATIONS.values() for name in rotation.secret_files]
    assert sorted(files) == sorted(TENANT_SECRETS)
