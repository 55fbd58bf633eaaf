"""The bundle's signature and manifest (appliance/offline): what `appliance bundle build` writes verifies, and a
bundle changed anywhere is refused naming what changed — by the controller's Python check and by the host's
stock-tools check (openssl, sha256sum, tar: install.unpack_command, run here as a host would run it)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.cli import main
from appliance.offline import install
from appliance.offline.build import write_bundle
from appliance.offline.manifest import MANIFEST, SIGNATURE, BundleError, Manifest, read_signed_manifest, verify_archive
from appliance.offline.signing import SigningError, keygen, load_private_key, public_pem

MEMBERS: dict[str, bytes] = {
    "source/appliance-src.tar.gz": b"sources " * 64,
    "wheels/demo-1.0-py3-none-any.whl": b"a wheel " * 300,
    "wheels/requirements.lock": b"demo==1.0\n",
    "node/streams.tar.gz": b"node_modules " * 50,
    "debs/libfoo1_1%3a2.0-1_amd64.deb": b"a deb with an epoch " * 40,
    "debs/Packages": b"Package: libfoo1\nVersion: 1:2.0-1\n",
}
STOCK_TOOLS = all(shutil.which(t) for t in ("openssl", "sha256sum", "tar", "sed", "cmp", "comm"))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


def make_bundle(path: Path, key_path: Path, members: dict[str, bytes] | None = None) -> Manifest:
    return write_bundle(path, dict(members or MEMBERS), load_private_key(key_path), {"demo": True},
                        datetime(2026, 12, 6, tzinfo=UTC))


def flip_byte(bundle: Path, member_name: str, at: int = 0) -> None:
    """Change one byte of one member's data in place (the archive stays a valid tar)."""
    with tarfile.open(bundle) as tar:
        member = tar.getmember(member_name)
        offset = member.offset_data + min(at, member.size - 1)
    with bundle.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def host_unpack(install_root: Path, bundle: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    """What the deploy does on a host after copying: the archive and key in place, then unpack_command."""
    install_root.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, install.incoming(install_root))
    shutil.copy(pub, install.public_key(install_root))
    return subprocess.run(["sh", "-c", install.unpack_command(install_root)], capture_output=True, text=True)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = keygen(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(SigningError, match="exists"):
        keygen(tmp_path)


def test_manifest_and_signature_round_trip(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = tmp_path / "b.tar"
    written = make_bundle(bundle, keys[0])
    checked = verify_archive(bundle, keys[1].read_bytes())
    assert checked == written
    assert Manifest.parse(written.render()) == written
    assert {e.path for e in checked.files} == set(MEMBERS)
    for entry in checked.files:
        assert entry.sha256 == hashlib.sha256(MEMBERS[entry.path]).hexdigest()
        assert entry.size == len(MEMBERS[entry.path])
    with tarfile.open(bundle) as tar:
        assert tar.getnames()[:2] == [MANIFEST, SIGNATURE]
    # Every file on its own line in the shape the host's sed reads.
    assert sum('{"path": ' in line for line in written.render().decode().splitlines()) == len(MEMBERS)


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_one_byte_changed_in_any_file_is_refused_naming_that_file(
    tmp_path: Path, keys: tuple[Path, Path], member: str
) -> None:
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, keys[0])
    flip_byte(bundle, member, at=7)
    with pytest.raises(BundleError, match=re.escape(f"{member} does not match its SHA-256")):
        verify_archive(bundle, keys[1].read_bytes())
    if STOCK_TOOLS:
        result = host_unpack(tmp_path / "host", bundle, keys[1])
        assert result.returncode == 1
        assert f"bundle refused: {member} does not match its SHA-256 in the signed manifest" in result.stderr
        assert not install.unpacked(tmp_path / "host").exists()


@pytest.mark.parametrize("member", [MANIFEST, SIGNATURE])
def test_a_changed_manifest_or_signature_is_refused(tmp_path: Path, keys: tuple[Path, Path], member: str) -> None:
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, keys[0])
    flip_byte(bundle, member, at=40)
    with pytest.raises(BundleError, match=re.escape(f"{SIGNATURE} is not a signature of {MANIFEST}")):
        verify_archive(bundle, keys[1].read_bytes())
    if STOCK_TOOLS:
        result = host_unpack(tmp_path / "host", bundle, keys[1])
        assert result.returncode == 1
        assert f"bundle refused: {SIGNATURE} is not a signature of {MANIFEST}" in result.stderr


def test_a_bundle_signed_by_another_key_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    other_private, _ = keygen(tmp_path / "other")
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, other_private)
    with pytest.raises(BundleError, match="is not a signature"):
        verify_archive(bundle, keys[1].read_bytes())
    if STOCK_TOOLS:
        result = host_unpack(tmp_path / "host", bundle, keys[1])
        assert result.returncode == 1 and "is not a signature of manifest.json by the key" in result.stderr


def test_a_file_added_to_the_archive_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, keys[0])
    with tarfile.open(bundle, "a") as tar:
        extra = b"#!/bin/sh\n"
        info = tarfile.TarInfo("debs/postinst-surprise.deb")
        info.size = len(extra)
        tar.addfile(info, io.BytesIO(extra))
    with pytest.raises(BundleError, match=r"debs/postinst-surprise\.deb is not listed in the signed manifest"):
        verify_archive(bundle, keys[1].read_bytes())
    if STOCK_TOOLS:
        result = host_unpack(tmp_path / "host", bundle, keys[1])
        assert "bundle refused: debs/postinst-surprise.deb is not listed in the signed manifest" in result.stderr


def test_a_link_in_the_archive_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, keys[0])
    with tarfile.open(bundle, "a") as tar:
        info = tarfile.TarInfo("wheels/escape")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(info)
    with pytest.raises(BundleError, match="wheels/escape is not a regular file"):
        verify_archive(bundle, keys[1].read_bytes())
    if STOCK_TOOLS:
        result = host_unpack(tmp_path / "host", bundle, keys[1])
        assert result.returncode == 1 and "something other than a regular file" in result.stderr


@pytest.mark.skipif(not STOCK_TOOLS, reason="needs openssl, sha256sum, tar (a stock Debian 12 host's tools)")
def test_stock_tools_verify_and_unpack_a_good_bundle_and_keep_the_previous_one_on_refusal(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from appliance.deploys.bundle import Bundle

    bundle = tmp_path / "b.tar"
    manifest = make_bundle(bundle, keys[0])
    root = tmp_path / "host"
    result = host_unpack(root, bundle, keys[1])
    assert result.returncode == 0, result.stderr
    assert f"bundle verified ({len(MEMBERS)} files)" in result.stdout
    for name, data in MEMBERS.items():
        assert (install.unpacked(root) / name).read_bytes() == data
    assert not install.incoming(root).exists()  # the archive is not kept once unpacked
    manifest_bytes, _ = read_signed_manifest(bundle)
    expected = Bundle(bundle, keys[1].read_bytes(), manifest, hashlib.sha256(manifest_bytes).hexdigest()).marker
    assert install.verified_marker(root).read_text().strip() == expected

    # A tampered newer bundle: refused, and the verified one stays as it was.
    newer = tmp_path / "newer.tar"
    make_bundle(newer, keys[0], {**MEMBERS, "wheels/demo-1.0-py3-none-any.whl": b"newer wheel"})
    flip_byte(newer, "debs/Packages")
    result = host_unpack(root, newer, keys[1])
    assert result.returncode == 1 and "debs/Packages does not match" in result.stderr
    assert (install.unpacked(root) / "wheels/demo-1.0-py3-none-any.whl").read_bytes() == MEMBERS[
        "wheels/demo-1.0-py3-none-any.whl"]
    assert install.verified_marker(root).read_text().strip() == expected
    assert not install.incoming(root).exists() and not (root / "bundle.new").exists()


def test_cli_verify_exits_zero_or_names_the_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = tmp_path / "b.tar"
    make_bundle(bundle, keys[0])
    runner = CliRunner()
    ok = runner.invoke(main, ["bundle", "verify", str(bundle), "--public-key", str(keys[1])])
    assert ok.exit_code == 0, ok.output
    assert f"{len(MEMBERS)} files match the manifest" in ok.output
    flip_byte(bundle, "node/streams.tar.gz")
    bad = runner.invoke(main, ["bundle", "verify", str(bundle), "--public-key", str(keys[1])])
    assert bad.exit_code == 1
    assert "node/streams.tar.gz does not match its SHA-256" in bad.output


def test_public_key_setting_is_a_file_or_the_pem_text(keys: tuple[Path, Path]) -> None:
    from appliance.deploys.bundle import public_key_pem

    pem = keys[1].read_bytes()
    assert public_key_pem(str(keys[1]))[0] == pem
    assert public_key_pem(pem.decode())[0] == pem
    assert public_pem(Ed25519PrivateKey.generate().public_key()).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_manifest_refuses_names_the_host_cannot_check() -> None:
    from appliance.offline.manifest import FileEntry

    for bad in ("../etc/passwd", "/abs", "debs/a b.deb", "debs/x\n.deb", MANIFEST):
        with pytest.raises(BundleError):
            Manifest("0", "now", {}, {}, (FileEntry(bad, "0" * 64, 1),)).render()
