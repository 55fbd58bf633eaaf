"""Per secret: its readers (restarted in this order after the new value is in place) and how it is replaced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import LOGIN_ROLES, S3_KEY_PAIRS

How = Literal["db_password", "file", "reencrypt", "s3_keys", "jwt", "identity_jwks", "backup_cipher", "refused"]


@dataclass(frozen=True)
class Rotation:
    name: str
    how: How
    # Components that read the secret only when they start, restarted in this order (the others follow its file,
    # appliance.secretfile).
    restarts: tuple[str, ...] = ()
    # For `refused`: why it cannot be replaced in place, and what to do instead.
    why: str = ""
    # Secret files it replaces (the S3 key pairs, the audit shipper's and the backup's, are one rotation).
    files: tuple[str, ...] = ()

    @property
    def secret_files(self) -> tuple[str, ...]:
        return self.files or (self.name,)


# Which component connects as each database role (and so restarts when its password changes). The gateway reads
# its password at every new connection (appliance.gateway.core.db): it needs no restart. The superuser's is read
# by whoever runs a host command, at that moment. (The agents' role cannot log in: it has no password.)
_DB_READERS: dict[str, tuple[str, ...]] = {"gateway": (), "sync": ("sync",), "audit": ("audit",),
                                           "identity": ("identity",)}

ROTATIONS: dict[str, Rotation] = {
    "db_superuser_password": Rotation("db_superuser_password", "db_password"),
    **{f"db_{role}_password": Rotation(f"db_{role}_password", "db_password", _DB_READERS[role])
       for role in LOGIN_ROLES},
    # The engine checks it on every request, the gateway presents it; both follow the file (appliance.secretfile),
    # the engine accepting the old value for a few seconds after it noticed: no restart, no refused request.
    "sync_secret": Rotation("sync_secret", "file"),
    # Likewise between the agents (checking every activation) and the gateway's outbox (presenting it).
    "agents_internal_token": Rotation("agents_internal_token", "file"),
    # The gateway alone seals with it and follows the file; rows sealed with the old key are re-sealed with the
    # new one in one transaction once every gateway process has noticed.
    "secrets_encryption_key": Rotation("secrets_encryption_key", "reencrypt"),
    # The gateway reloads its keyring by itself; the old key keeps verifying for gateway.key_rotation_grace_s.
    "jwt_signing_key": Rotation("jwt_signing_key", "jwt"),
    # `appliance identity rotate-keys`: new keys published beside the old ones for a week.
    "identity_jwks": Rotation("identity_jwks", "identity_jwks", ("identity",)),
    # The provider's session cookies: people signed in at the provider sign in there again (the gateway's own
    # sessions are not affected).
    "identity_cookie_keys": Rotation("identity_cookie_keys", "file", ("identity",)),
    # The provider checks it at the code exchange (it reads it when it starts); the gateway reads the file at each
    # exchange.
    "identity_gateway_client_secret": Rotation("identity_gateway_client_secret", "file", ("identity",)),
    # New key pairs on the store beside the old ones, the readers restarted, then the old pairs removed (on a vault
    # host's store, by the next deploy: appliance.rotation.staged_keys).
    "s3_keys": Rotation("s3_keys", "s3_keys", tuple(p.component for p in S3_KEY_PAIRS),
                        files=tuple(name for p in S3_KEY_PAIRS for name in p.files)),
    # pgBackRest encrypts a repository with one passphrase for its whole life: a new passphrase is a new repository
    # generation with its own stanza and a full backup at once; the earlier one is kept, with its passphrase, for
    # restores until the new one holds the retention's full backups (appliance.backup.generations). Postgres's
    # archive_command and the scheduler run pgBackRest through a wrapper that reads the files at each run: no
    # restart.
    "backup_cipher_passphrase": Rotation("backup_cipher_passphrase", "backup_cipher"),
}

# The names an operator may give: every rotation, and each S3 key file naming the pair it belongs to.
ALIASES = {name: "s3_keys" for p in S3_KEY_PAIRS for name in p.files}


def rotation(name: str) -> Rotation:
    return ROTATIONS[ALIASES.get(name, name)]
