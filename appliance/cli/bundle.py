"""`appliance bundle ...`: the signed archive for air-gapped installs (keygen, build, verify)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.group()
def bundle() -> None:
    """Signed bundles: everything a host installs, for hosts without internet (`common.bundle`)."""


@bundle.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="directory for the key pair")
def keygen(out_dir: Path) -> None:
    """Make the operator's Ed25519 key pair: DIR/bundle.key (0600, keep it off the hosts) and DIR/bundle.pub."""
    from appliance.offline.signing import SigningError
    from appliance.offline.signing import keygen as make_keys

    try:
        private_path, public_path = make_keys(out_dir)
    except SigningError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"private key {private_path} (0600: it signs bundles; keep it where bundles are built)")
    click.echo(f"public key  {public_path} (for the inventory: common.bundle_public_key)")


@bundle.command()
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="the private key from `appliance bundle keygen`")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="archive to write (default: appliance-bundle-<version>-<time>.tar here)")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="download cache kept between builds (default /var/tmp/appliance-bundle-cache)")
def build(key_path: Path, out: Path | None, cache: Path | None) -> None:
    """Fetch and sign everything a tenant host and a vault host install (needs internet: PyPI, npm, a Debian
    mirror; run on Debian 12 x86_64 from the source tree you deploy with)."""
    from appliance.offline.build import DEFAULT_CACHE, human
    from appliance.offline.build import build as build_bundle
    from appliance.offline.manifest import BundleError, verify_archive
    from appliance.offline.signing import SigningError, load_private_key, public_pem

    began = time.monotonic()
    try:
        path, manifest = build_bundle(key_path, out, cache or DEFAULT_CACHE,
                                      progress=lambda line: click.echo(line, err=True))
        # Check what was written, as a host will: the signature with the key's public half, every file.
        verify_archive(path, public_pem(load_private_key(key_path).public_key()), str(key_path))
    except (BundleError, SigningError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    size = path.stat().st_size
    click.echo(f"bundle {path}: {len(manifest.files)} files, {human(size)}, built in {time.monotonic() - began:.0f} s, "
               "verified")
    click.echo(f"deploy with it: common.bundle = {path.resolve()} and common.bundle_public_key = the bundle.pub")


@bundle.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="the operator's bundle.pub")
def verify(archive: Path, public_key: Path) -> None:
    """Check a bundle: its manifest's signature, then every file's SHA-256 and size. Exits 1 naming the first
    file that does not match, or the bad signature."""
    from appliance.offline.manifest import BundleError, verify_archive
    from appliance.offline.signing import SigningError

    try:
        manifest = verify_archive(archive, public_key.read_bytes(), str(public_key))
    except (BundleError, SigningError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{archive}: signature by {public_key} verified; {len(manifest.files)} files match the manifest "
               f"(appliance {manifest.version}, built {manifest.built_at}, for Debian {manifest.target['debian']} "
               f"{manifest.target['arch']}, Python {manifest.target['python']})")
