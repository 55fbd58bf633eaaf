"""The on-prem layout rehearsed for real: a vault host running the S3 Object Lock store and a tenant host using
it, two fake hosts on this machine (tests/support/hosts.py: own network, mounts, processes, sshd), deployed by
the real `pyinfra -y <inventory> deploy.py` over SSH.

What it proves: the tenant host comes up healthy with its buckets on the vault, reached over TLS at the vault's
address and verified with the vault's CA; the vault exposes only S3 to the network; a tenant's S3 keys travel
from its host to the vault without touching pyinfra's output or the controller's disk; one tenant's keys do not
open the other's buckets; the tenant host runs no store of its own; a second deploy changes nothing.
What it cannot prove is listed in tests/support/hosts.py (shared packages, users, kernel).

Takes minutes: each fake host installs its own venv and streams server.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from appliance.config import AUDIT_S3_KEYS, BACKUP_S3_KEYS, S3_KEY_PAIRS, HostConfig, S3KeyPair, inventory_configs
from appliance.install_steps import apt_packages
from tests.support.deployment import (
    BIN,
    ansible_inventory,
    ansible_playbook,
    changed_operation_names,
    changed_operations,
    pids,
)
from tests.support.hosts import FakeHost, fake_hosts, prime_packages
from tests.support.paths import REPO

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="fake hosts (namespaces, mounts, a bridge) need root"),
]

# Not acme/globex: the users are the machine's (shared /etc/passwd), and @local's demo tenants must stay alone.
TENANTS = {"vt-a": {"slot": 1}, "vt-b": {"slot": 2}}
APPLIANCE = "/opt/appliance/venv/bin/appliance"
KEY_NAMES = tuple(name for pair in S3_KEY_PAIRS for name in pair.files)
STORE_USER = "appliance-objectstore"  # HostConfig.objectstore_user


@dataclass
class Rehearsal:
    vault: FakeHost
    tenant: FakeHost
    configs: dict[str, HostConfig]
    inventory: Path
    snapshot: Path
    harness_root: Path
    started: float  # wall clock before the first deploy: files written since then are checked for keys
    outputs: list[str] = field(default_factory=list)  # pyinfra's full output of every deploy
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def vault_config(self) -> HostConfig:
        return self.configs["vault"]

    @property
    def tenant_config(self) -> HostConfig:
        return self.configs["tenant"]

    def deploy(self, label: str, *extra: str) -> str:
        began = time.monotonic()
        result = subprocess.run(
            [str(BIN / "pyinfra"), "-y", *extra, str(self.inventory), "deploy.py"],
            cwd=self.snapshot,
            # The snapshot's package, not the editable install of the live working tree (see _snapshot).
            env={**os.environ, "PYTHONPATH": str(self.snapshot)},
            capture_output=True, text=True, timeout=3600,
        )
        self.timings[label] = time.monotonic() - began
        output = result.stdout + result.stderr
        self.outputs.append(output)
        if result.returncode != 0:
            raise AssertionError(f"{label} failed ({result.returncode}):\n{_redacted(self, output)[-12000:]}")
        return output

    def keys(self, tenant_id: str) -> dict[str, str]:
        """A tenant's S3 keys as they are on its host, read there; in memory only, never printed."""
        found = {}
        for name in KEY_NAMES:
            path = self.tenant_config.tenant(tenant_id).secret_path(name)
            result = self.tenant.run(["cat", str(path)])
            assert result.returncode == 0, f"cannot read {path} on the tenant host"
            found[name] = result.stdout.strip()
            assert len(found[name]) >= 16, f"{path} on the tenant host does not hold a key"
        return found


def _redacted(rehearsal: Rehearsal, text: str) -> str:
    """Failure messages must not carry keys even if the deploy printed them."""
    for tenant_id in TENANTS:
        with_keys = rehearsal.tenant.run(["sh", "-c", "cat " + " ".join(
            str(rehearsal.tenant_config.tenant(tenant_id).secret_path(n)) for n in KEY_NAMES) + " 2>/dev/null"])
        for secret in with_keys.stdout.split():
            if len(secret) >= 16:
                text = text.replace(secret, "<redacted>")
    return text


def _inventory_hosts(vault: FakeHost, tenant: FakeHost) -> dict[str, dict[str, Any]]:
    """Host name -> host data, as an operator's on-prem inventory would give them (ssh_* and appliance data)."""
    return {
        "vault": {
            **vault.inventory_data(),
            "objectstore": {"mode": "embedded", "bind_address": vault.address, "dns_name": "vault.rehearsal"},
        },
        "tenant": {**tenant.inventory_data(), "objectstore_host": "vault", "tenants": TENANTS},
    }


def _inventory_file(hosts: dict[str, dict[str, Any]]) -> str:
    return textwrap.dedent(f'''\
        """Written by tests/multihost/test_vault_flow.py: a vault host and a tenant host (fake hosts)."""
        vault = [("vault", {hosts["vault"]!r})]
        tenant_hosts = [("tenant", {hosts["tenant"]!r})]
        ''')


def _snapshot(destination: Path) -> Path:
    """The working tree as it is now (tracked and untracked, not ignored files), copied once for both deploys.

    Others edit this repository while the test runs; the deploy ships the sources it runs from, so deploying
    from the live tree would make the second deploy reinstall whatever changed in between."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _users(names: list[str]) -> set[str]:
    return {n for n in names if n in {p.pw_name for p in pwd.getpwall()}}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    work = tmp_path_factory.mktemp("vault-flow")
    # The deploy creates OS users, and those are the machine's (shared /etc/passwd): remove those it created.
    users = [f"tenant-{t}" for t in TENANTS]
    users_before = _users([*users, STORE_USER])
    # Both hosts ask apt for the same packages at the same moment on one shared dpkg database: install them
    # once, so the deploy's apt step finds them (the rehearsal does not cover a fresh host's apt install).
    probe = inventory_configs({"tenant": {"tenants": TENANTS}})["tenant"]
    prime_packages(apt_packages(probe, "supervisor") + ([] if shutil.which("npm") else ["npm"]))
    try:
        with fake_hosts(["vault", "tenant"]) as hosts:
            vault, tenant = hosts["vault"], hosts["tenant"]
            inventory_hosts = _inventory_hosts(vault, tenant)
            inventory = work / "inventory.py"
            inventory.write_text(_inventory_file(inventory_hosts))
            rehearsal = Rehearsal(
                vault=vault, tenant=tenant, configs=inventory_configs(inventory_hosts), inventory=inventory,
                snapshot=_snapshot(work / "repo"), harness_root=vault.root.parent, started=time.time() - 1,
            )
            rehearsal.deploy("first deploy", "-vvv")
            yield rehearsal
            print(f"\nvault flow timings: {', '.join(f'{k} {v:.0f}s' for k, v in rehearsal.timings.items())}")
    finally:
        created = set(users) - users_before
        # The store's user too, unless this machine's own embedded store appeared meanwhile and runs as it.
        if STORE_USER not in users_before and not Path("/srv/appliance/objectstore").exists():
            created.add(STORE_USER)
        for user in sorted(created & _users([*users, STORE_USER])):
            subprocess.run(["userdel", user], capture_output=True, check=False)


def _status(host: FakeHost) -> tuple[int, dict[str, Any]]:
    """`appliance status --json` on the host, over SSH."""
    result = host.ssh(f"{APPLIANCE} status --json")
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"status on {host.name}: {result.returncode} {result.stderr[-2000:]}") from None


def test_tenant_host_is_all_healthy_with_buckets_on_the_vault_over_tls(rehearsal: Rehearsal) -> None:
    code, report = _status(rehearsal.tenant)
    assert code == 0, report
    assert set(report["tenants"]) == set(TENANTS)
    # The vault's store by its DNS name (the deploy maps it in the tenant host's /etc/hosts).
    endpoint = f"https://{rehearsal.vault_config.objectstore.dns_name}:{rehearsal.vault_config.objectstore.s3_port}"
    for tenant_id, tenant in report["tenants"].items():
        expected = {"postgres", "sync", "streams", "gateway", "agents", "audit", "backup", "buckets"}
        assert expected <= set(tenant["components"]), tenant_id
        for name, component in tenant["components"].items():
            assert component["healthy"], (tenant_id, name, component)
        detail = tenant["components"]["buckets"]["detail"]
        assert f"reachable at {endpoint}" in detail and "audit shipper's keys" in detail, detail

    # The CA the tenant host verifies with is the vault's, and it is what makes TLS to the vault work: the
    # same handshake with the system's CAs fails.
    ca = str(rehearsal.tenant_config.ca_cert)
    vault_ca = rehearsal.vault.run(["cat", ca])
    tenant_ca = rehearsal.tenant.run(["cat", ca])
    assert vault_ca.returncode == 0 and "BEGIN CERTIFICATE" in vault_ca.stdout
    assert tenant_ca.stdout == vault_ca.stdout
    where = (rehearsal.vault.address, rehearsal.vault_config.objectstore.s3_port)
    handshake = textwrap.dedent(f"""\
        import socket, ssl
        def attempt(context):
            try:
                with socket.create_connection({where!r}, 5) as raw:
                    with context.wrap_socket(raw, server_hostname={where[0]!r}) as tls:
                        return "ok " + tls.version()
            except ssl.SSLCertVerificationError as exc:
                return "untrusted " + exc.verify_message
        print(attempt(ssl.create_default_context(cafile={ca!r})))
        print(attempt(ssl.create_default_context()))
        """)
    result = rehearsal.tenant.ssh("/opt/appliance/venv/bin/python -", input=handshake)
    with_vault_ca, with_system_cas = result.stdout.splitlines()
    assert with_vault_ca.startswith("ok TLSv1."), result
    assert with_system_cas.startswith("untrusted"), result


def _listening(host: FakeHost) -> set[tuple[str, int]]:
    result = host.run(["ss", "-Htln"])
    assert result.returncode == 0, result.stderr
    found = set()
    for line in result.stdout.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        found.add((address.strip("[]"), int(port)))
    return found


_CONNECT = """\
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
address, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def attempt(port):
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
with ThreadPoolExecutor(len(ports)) as pool:
    print(json.dumps(dict(zip(map(str, ports), pool.map(attempt, ports)))))
"""


def _connect_from(host: FakeHost, address: str, ports: list[int]) -> dict[int, str]:
    result = host.run(["python3", "-c", _CONNECT, address, *map(str, ports)])
    assert result.returncode == 0, result.stderr
    return {int(port): outcome for port, outcome in json.loads(result.stdout).items()}


def test_vault_store_is_reachable_from_the_tenant_host_only_on_s3(rehearsal: Rehearsal) -> None:
    vault = rehearsal.vault
    ports = rehearsal.vault_config.objectstore.ports()
    internal = {name: port for name, port in ports.items() if name != "s3"}
    listening = _listening(vault)
    # The store really listens on the vault's LAN address, internal ports included (weed binds them all to
    # -ip.bind), so what keeps them from the network is the vault's firewall, not their absence.
    on_lan = {port for address, port in listening if address in (vault.address, "0.0.0.0", "*", "::")}
    assert ports["s3"] in on_lan
    lan_internal = {name: port for name, port in internal.items() if port in on_lan}
    assert lan_internal, f"no internal store port listens on {vault.address}: {sorted(listening)}"
    from_vault = _connect_from(vault, vault.address, list(lan_internal.values()))
    assert set(from_vault.values()) == {"open"}, from_vault

    from_tenant = _connect_from(rehearsal.tenant, vault.address, sorted(ports.values()))
    assert from_tenant[ports["s3"]] == "open", from_tenant
    # Dropped (no answer at all), not refused: the vault's input chain, whether or not a port listens.
    assert {port: from_tenant[port] for port in internal.values()} == dict.fromkeys(internal.values(), "timeout")


def test_tenant_keys_are_on_the_vault_and_nowhere_on_the_controller(rehearsal: Rehearsal) -> None:
    secrets = [value for tenant_id in TENANTS for value in rehearsal.keys(tenant_id).values()]
    # On the vault: the store's identities hold each tenant's current keys (and the relay left no copy).
    s3_json = rehearsal.vault.run(["cat", str(rehearsal.vault_config.objectstore_root / "conf" / "s3.json")])
    assert s3_json.returncode == 0, s3_json.stderr
    assert all(secret in s3_json.stdout for secret in secrets), "the vault's store lacks a tenant's current keys"
    staging = rehearsal.vault.run(["find", str(rehearsal.vault_config.common.config_dir / "staging"), "-type", "f"])
    assert staging.stdout.strip() == "", "relayed keys were left in the vault's staging directory"

    # Not in pyinfra's output (the first deploy ran with -vvv: commands, facts and their output).
    for number, output in enumerate(rehearsal.outputs, 1):
        leaked = [i for i, secret in enumerate(secrets) if secret in output]
        assert not leaked, f"deploy {number}'s output contains tenant S3 key #{leaked} (values withheld)"

    # Not on the controller's disk: no file written since the first deploy began holds one, outside the fake
    # hosts' own disks (which are the hosts', only physically on this machine).
    excluded = [str(host.fs) for host in (rehearsal.vault, rehearsal.tenant)]
    found = _files_containing(secrets, since=rehearsal.started, excluded=excluded)
    assert not found, f"tenant S3 keys found on the controller's disk in {found} (values withheld)"


def _files_containing(secrets: list[str], *, since: float, excluded: list[str]) -> list[str]:
    needles = [s.encode() for s in secrets]
    found = []
    for top in ("/", "/dev/shm"):
        top_dev = os.stat(top).st_dev
        for directory, dirs, files in os.walk(top):
            dirs[:] = [
                d for d in dirs
                if not any(os.path.join(directory, d).startswith(e) for e in excluded)
                and _same_device(os.path.join(directory, d), top_dev)
            ]
            for name in files:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                    if st.st_mtime < since or not stat.S_ISREG(st.st_mode) or st.st_size > 256 << 20:
                        continue
                    with open(path, "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                if any(needle in data for needle in needles):
                    found.append(path)
    return found


def _same_device(path: str, device: int) -> bool:
    try:
        return os.lstat(path).st_dev == device
    except OSError:
        return False


def _s3(rehearsal: Rehearsal, keys: dict[str, str], ca: Path, pair: S3KeyPair) -> Any:
    return boto3.client(
        "s3", endpoint_url=f"https://{rehearsal.vault.address}:{rehearsal.vault_config.objectstore.s3_port}",
        region_name=rehearsal.vault_config.objectstore.region, verify=str(ca),
        aws_access_key_id=keys[pair.access_key], aws_secret_access_key=keys[pair.secret_key],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _vault_ca(rehearsal: Rehearsal, tmp_path: Path) -> Path:
    """The vault's CA certificate (public), for S3 clients of this test."""
    ca = tmp_path / "vault-ca.pem"
    ca.write_text(rehearsal.vault.run(["cat", str(rehearsal.vault_config.ca_cert)]).stdout)
    return ca


def _ansible_inventory(rehearsal: Rehearsal, tmp_path: Path) -> Path:
    """The same two hosts and settings as an Ansible inventory."""
    settings = _inventory_hosts(rehearsal.vault, rehearsal.tenant)
    return ansible_inventory(tmp_path / "onprem.yml", {
        name: {**{k: v for k, v in settings[name].items() if not k.startswith("ssh_")}, **host.ansible_data()}
        for name, host in (("vault", rehearsal.vault), ("tenant", rehearsal.tenant))
    })


def _refused(call: Any, **kwargs: Any) -> str:
    try:
        call(**kwargs)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code"))
    return "allowed"


def test_one_tenants_keys_cannot_read_the_others_buckets_on_the_vault(rehearsal: Rehearsal, tmp_path: Path) -> None:
    ca = _vault_ca(rehearsal, tmp_path)
    keys_a, keys_b = rehearsal.keys("vt-a"), rehearsal.keys("vt-b")
    b = _s3(rehearsal, keys_b, ca, BACKUP_S3_KEYS)
    body = b"vt-b's backup object"
    b.put_object(Bucket="vt-b-backup", Key="probe/vault-flow", Body=body)
    assert b.get_object(Bucket="vt-b-backup", Key="probe/vault-flow")["Body"].read() == body
    denied = {"AccessDenied", "403"}
    for pair in S3_KEY_PAIRS:
        a = _s3(rehearsal, keys_a, ca, pair)
        a.list_objects_v2(Bucket=f"vt-a-{pair.component}")  # each of vt-a's pairs works on its own bucket
        assert _refused(a.get_object, Bucket="vt-b-backup", Key="probe/vault-flow") in denied
        assert _refused(a.list_objects_v2, Bucket="vt-b-backup") in denied
        assert _refused(a.list_objects_v2, Bucket="vt-b-audit") in denied
        assert _refused(a.put_object, Bucket="vt-b-backup", Key="probe/from-a", Body=b"x") in denied
        assert _refused(_s3(rehearsal, keys_b, ca, pair).list_objects_v2, Bucket="vt-a-audit") in denied
    # Inside one tenant (issue 20): the audit shipper's pair cannot reach the backup bucket, nor the backup's the
    # audit bucket, on the vault too.
    audit_b = _s3(rehearsal, keys_b, ca, AUDIT_S3_KEYS)
    assert _refused(audit_b.get_object, Bucket="vt-b-backup", Key="probe/vault-flow") in denied
    assert _refused(audit_b.list_objects_v2, Bucket="vt-b-backup") in denied
    assert _refused(audit_b.put_object, Bucket="vt-b-backup", Key="probe/from-audit", Body=b"x") in denied
    assert _refused(b.list_objects_v2, Bucket="vt-b-audit") in denied
    assert _refused(b.put_object, Bucket="vt-b-audit", Key="probe/from-backup", Body=b"x") in denied


def test_tenant_host_runs_no_object_store(rehearsal: Rehearsal) -> None:
    tenant = rehearsal.tenant
    processes = tenant.run(["ps", "-e", "-o", "comm="]).stdout.split()
    assert "weed" not in processes, processes
    assert "weed" in rehearsal.vault.run(["ps", "-e", "-o", "comm="]).stdout.split()
    programs = tenant.run(["ls", "/etc/supervisor/conf.d"]).stdout.split()
    assert programs and not [p for p in programs if "objectstore" in p], programs
    store_ports = set(rehearsal.vault_config.objectstore.ports().values())
    assert not {port for _, port in _listening(tenant)} & store_ports
    assert tenant.run(["test", "-e", str(rehearsal.vault_config.objectstore_root)]).returncode != 0
    _, report = _status(tenant)
    assert "objectstore" not in report["host"]["components"]


def test_s3_keys_of_a_tenant_kept_by_the_vault_rotate_through_the_next_deploy(
        rehearsal: Rehearsal, tmp_path: Path) -> None:
    """Issue 20: `secret rotate <t> s3_keys` on a tenant host whose store is the vault stages new pairs; the next
    deploy gives them to the vault beside the old ones, switches the tenant host to them (its audit shipper and
    backup restarted) and has the old ones refused, all in one run. Nothing changes before that deploy."""
    ca = _vault_ca(rehearsal, tmp_path)
    old = rehearsal.keys("vt-a")
    others = rehearsal.keys("vt-b")
    staged = rehearsal.tenant.ssh(f"{APPLIANCE} secret rotate vt-a s3_keys")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    assert "staged for the deploy" in staged.stdout and "vault" in staged.stdout
    assert rehearsal.keys("vt-a") == old
    for pair in S3_KEY_PAIRS:  # the current pairs keep working until the deploy
        _s3(rehearsal, old, ca, pair).list_objects_v2(Bucket=f"vt-a-{pair.component}")

    output = rehearsal.deploy("deploy after an S3 key rotation")
    new = rehearsal.keys("vt-a")
    assert all(new[name] != old[name] for name in KEY_NAMES)
    assert rehearsal.keys("vt-b") == others
    leaked = [name for name in KEY_NAMES for keys in (old, new) if keys[name] in output]
    assert not leaked, f"the deploy's output contains keys {leaked} (values withheld)"
    assert "Old S3 keys of vt-a" in output
    denied = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
    for pair in S3_KEY_PAIRS:
        _s3(rehearsal, new, ca, pair).list_objects_v2(Bucket=f"vt-a-{pair.component}")
        assert _refused(_s3(rehearsal, old, ca, pair).list_objects_v2, Bucket=f"vt-a-{pair.component}") in denied
    staged_files = rehearsal.tenant.run(["sh", "-c", "ls " + str(
        rehearsal.tenant_config.tenant("vt-a").secrets_dir) + " | grep -c '[.]next$' || true"])
    assert staged_files.stdout.strip() == "0"
    # The readers use the new pairs: a backup (the backup's pair) and the audit shipper catching up (its pair).
    backup = rehearsal.tenant.ssh(f"{APPLIANCE} backup vt-a")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    code, report = _status(rehearsal.tenant)
    assert code == 0, report
    components = report["tenants"]["vt-a"]["components"]
    assert all(c["healthy"] for c in components.values()), {k: c["detail"] for k, c in components.items()}


def test_second_deploy_changes_nothing_and_restarts_nothing(rehearsal: Rehearsal) -> None:
    before = {host.name: pids(_status(host)[1]) for host in (rehearsal.vault, rehearsal.tenant)}
    output = rehearsal.deploy("second deploy")
    after = {host.name: pids(_status(host)[1]) for host in (rehearsal.vault, rehearsal.tenant)}
    assert changed_operations(output) == 0, changed_operation_names(output)
    assert after == before
    assert before["vault"]["host/objectstore"]
    assert all(pid for name, pid in before["tenant"].items() if not name.endswith("/buckets")), before["tenant"]
    secrets = [value for tenant_id in TENANTS for value in rehearsal.keys(tenant_id).values()]
    assert not [s for s in secrets if s in output], "the second deploy's output contains a tenant S3 key"


def test_ansible_with_the_same_inventory_changes_and_restarts_nothing_on_either_host(
        rehearsal: Rehearsal, tmp_path: Path) -> None:
    """Issue 19: the two-host layout pyinfra deployed is what Ansible deploys too (the vault's relay included):
    the same settings in Ansible's inventory change nothing on either host."""
    before = {name: pids(_status(host)[1]) for name, host in (("vault", rehearsal.vault),
                                                                ("tenant", rehearsal.tenant))}
    inventory = _ansible_inventory(rehearsal, tmp_path)
    code, output, changed = ansible_playbook(inventory, repo=rehearsal.snapshot)
    output = _redacted(rehearsal, output)
    assert code == 0, output[-8000:]
    assert changed == {"vault": 0, "tenant": 0}, output[-8000:]
    after = {name: pids(_status(host)[1]) for name, host in (("vault", rehearsal.vault),
                                                               ("tenant", rehearsal.tenant))}
    assert after == before


def test_ansible_carries_s3_keys_staged_for_the_vault_as_the_pyinfra_deploy_does(
        rehearsal: Rehearsal, tmp_path: Path) -> None:
    """The same rotation through the Ansible playbook: staged pairs to the vault beside the old ones, the tenant
    host switched, the old ones refused; a second rotation command before the run keeps the staged pairs."""
    ca = _vault_ca(rehearsal, tmp_path)
    old = rehearsal.keys("vt-b")
    assert rehearsal.tenant.ssh(f"{APPLIANCE} secret rotate vt-b s3_keys").returncode == 0
    kept = rehearsal.tenant.ssh(f"{APPLIANCE} secret rotate vt-b s3_keys")
    assert kept.returncode == 0 and "staged earlier kept" in kept.stdout
    inventory = _ansible_inventory(rehearsal, tmp_path)
    code, output, _ = ansible_playbook(inventory, repo=rehearsal.snapshot)
    redacted = _redacted(rehearsal, output)
    assert code == 0, redacted[-8000:]
    new = rehearsal.keys("vt-b")
    assert all(new[name] != old[name] for name in KEY_NAMES)
    assert not [name for name in KEY_NAMES for keys in (old, new) if keys[name] in output]
    denied = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
    for pair in S3_KEY_PAIRS:
        _s3(rehearsal, new, ca, pair).list_objects_v2(Bucket=f"vt-b-{pair.component}")
        assert _refused(_s3(rehearsal, old, ca, pair).list_objects_v2, Bucket=f"vt-b-{pair.component}") in denied
    code, output, changed = ansible_playbook(inventory, repo=rehearsal.snapshot)
    assert code == 0 and changed == {"vault": 0, "tenant": 0}, _redacted(rehearsal, output)[-8000:]


def test_fake_hosts_are_reached_over_the_network_only_by_their_address(rehearsal: Rehearsal) -> None:
    # Sanity of the rehearsal itself: the controller reaches each host's sshd at its address, and the hosts
    # are separate machines as far as the network goes (each has only loopback and its one veth).
    for host in (rehearsal.vault, rehearsal.tenant):
        with socket.create_connection((host.address, 22), timeout=3):
            pass
        addresses = host.run(["ip", "-4", "-o", "addr", "show"]).stdout
        assert f"inet {host.address}/" in addresses
        assert len([line for line in addresses.splitlines() if " inet " in line]) == 2, addresses
