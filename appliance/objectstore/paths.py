"""Where the embedded store keeps each of its files, derived from `HostConfig` in this one place.

`HostConfig` gives the roots (data, conf dir, CA); the file names inside them are decided here so that the
argv, the templates, the TLS code and the deploy all agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import HostConfig


@dataclass(frozen=True)
class StorePaths:
    root: Path
    data_dir: Path
    conf_dir: Path
    run_dir: Path
    ca_cert: Path
    ca_key: Path
    admin_file: Path

    @property
    def s3_config(self) -> Path:
        """Static S3 identities (admin + one per tenant); holds secrets, 0600."""
        return self.conf_dir / "s3.json"

    @property
    def security_toml(self) -> Path:
        """JWT signing keys and gRPC mTLS settings, read by weed through -config_dir; 0600."""
        return self.conf_dir / "security.toml"

    @property
    def jwt_keys(self) -> Path:
        """The JWT signing keys themselves, generated once; security.toml is rendered from them."""
        return self.conf_dir / "jwt-keys.json"

    @property
    def server_cert(self) -> Path:
        return self.conf_dir / "s3.crt"

    @property
    def server_key(self) -> Path:
        return self.conf_dir / "s3.key"

    @property
    def grpc_cert(self) -> Path:
        """Client+server certificate every weed component presents on gRPC (mutual TLS)."""
        return self.conf_dir / "grpc.crt"

    @property
    def grpc_key(self) -> Path:
        return self.conf_dir / "grpc.key"

    @property
    def filer_socket(self) -> Path:
        return self.run_dir / "filer.sock"

    @property
    def s3_socket(self) -> Path:
        return self.run_dir / "s3.sock"


def store_paths(host: HostConfig) -> StorePaths:
    return StorePaths(
        root=host.objectstore_root,
        data_dir=host.objectstore_data,
        conf_dir=host.objectstore_conf_dir,
        # Sockets live beside the conf dir, not in /tmp, so only the store's user can reach them.
        run_dir=host.objectstore_root / "run",
        ca_cert=host.ca_cert,
        ca_key=host.ca_key,
        admin_file=host.objectstore_admin_file,
    )
