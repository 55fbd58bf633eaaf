"""People of the embedded provider (`identity.accounts`): what `appliance user ...` does, as the tenant's
superuser, each change and its audit event in one transaction.

Passwords are hashed here with argon2id at the tenant's cost settings; the provider (Node, argon2) verifies the
same PHC strings. A password is taken from the caller (the CLI reads stdin), never from a command line; or
the person sets it through a one-time setup link whose secret only they see (only its SHA-256 is stored).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from argon2 import PasswordHasher, Type

from appliance.audit.chain import append_event
from appliance.audit.operator import operator_event
from appliance.config import TenantConfig
from appliance.identity.provider import issuer_url

EMAIL: Final = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
PASSWORD_MIN_CHARS: Final = 12
PASSWORD_MAX_BYTES: Final = 1024
SETUP_PATH: Final = "/setup/"


class AccountError(ValueError):
    """A request about an account that cannot be done; the message says why (no secret in it)."""


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    email: str
    display_name: str
    disabled: bool
    has_password: bool
    locked_until: datetime | None
    created_at: datetime


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not EMAIL.match(email):
        raise AccountError(f"{email!r} is not an email address")
    return email


def check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN_CHARS:
        raise AccountError(f"a password needs at least {PASSWORD_MIN_CHARS} characters")
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        raise AccountError(f"a password may have at most {PASSWORD_MAX_BYTES} bytes")


def password_hasher(tenant: TenantConfig) -> PasswordHasher:
    settings = tenant.identity
    return PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib,
                          parallelism=1, hash_len=32, salt_len=16, type=Type.ID)


def hash_password(tenant: TenantConfig, password: str) -> str:
    check_password(password)
    return password_hasher(tenant).hash(password)


def _event(conn: psycopg.Connection[Any], tenant: TenantConfig, action: str, account: uuid.UUID,
           detail: dict[str, Any]) -> None:
    append_event(conn, operator_event(tenant, action, detail, subject=f"account:{account}"))


_COLUMNS = "id, email, display_name, disabled, password_hash IS NOT NULL, locked_until, created_at"


def _account(row: tuple[Any, ...]) -> Account:
    return Account(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def find(conn: psycopg.Connection[Any], email: str) -> Account:
    row = conn.execute(f"SELECT {_COLUMNS} FROM identity.accounts WHERE email = %s",
                       [normalize_email(email)]).fetchone()
    if row is None:
        raise AccountError(f"no account {normalize_email(email)}")
    return _account(row)


def list_accounts(conn: psycopg.Connection[Any]) -> list[Account]:
    return [_account(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM identity.accounts ORDER BY email")]


def add(conn: psycopg.Connection[Any], tenant: TenantConfig, email: str, display_name: str = "",
        password: str | None = None) -> Account:
    """A new account (no password yet unless given); AccountError if the email is taken."""
    email = normalize_email(email)
    if len(display_name) > 200:
        raise AccountError("a display name may have at most 200 characters")
    hashed = hash_password(tenant, password) if password is not None else None
    account_id = uuid.uuid4()
    with conn.transaction():
        try:
            conn.execute(
                "INSERT INTO identity.accounts (id, email, display_name, password_hash, password_changed_at) "
                "VALUES (%s, %s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)",
                [account_id, email, display_name, hashed, hashed],
            )
        except psycopg.errors.UniqueViolation:
            raise AccountError(f"an account {email} exists already") from None
        _event(conn, tenant, "identity.user_added", account_id,
               {"email": email, "password": "set" if hashed else "setup_link"})
    return find(conn, email)


def set_password(conn: psycopg.Connection[Any], tenant: TenantConfig, email: str, password: str) -> Account:
    """A new password (and the account unlocked); its sessions at the provider end."""
    account = find(conn, email)
    hashed = hash_password(tenant, password)
    with conn.transaction():
        conn.execute(
            "UPDATE identity.accounts SET password_hash = %s, password_changed_at = now(), failed_logins = 0, "
            "locked_until = NULL, updated_at = now() WHERE id = %s", [hashed, account.id])
        _end_provider_sessions(conn, account.id)
        _event(conn, tenant, "identity.password_reset", account.id, {"email": account.email, "by": "operator"})
    return find(conn, email)


def setup_link(conn: psycopg.Connection[Any], tenant: TenantConfig, email: str) -> str:
    """A one-time link the person opens to set their password; earlier unused links of the account end."""
    account = find(conn, email)
    secret = secrets.token_urlsafe(32)
    ttl = tenant.identity.setup_link_ttl_s
    with conn.transaction():
        conn.execute("UPDATE identity.setup_links SET used_at = now() WHERE account_id = %s AND used_at IS NULL",
                     [account.id])
        conn.execute(
            "INSERT INTO identity.setup_links (token_hash, account_id, expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s))",
            [hashlib.sha256(secret.encode()).digest(), account.id, ttl],
        )
        _event(conn, tenant, "identity.setup_link_issued", account.id, {"email": account.email, "ttl_s": ttl})
    return issuer_url(tenant) + SETUP_PATH + secret


def set_disabled(conn: psycopg.Connection[Any], tenant: TenantConfig, email: str, disabled: bool) -> Account:
    """Disable (or enable) a person: no login at the provider, and the gateway ends their sessions and refuses
    their tokens (public.users.disabled of every principal the account logged in as)."""
    account = find(conn, email)
    with conn.transaction():
        conn.execute("UPDATE identity.accounts SET disabled = %s, updated_at = now() WHERE id = %s",
                     [disabled, account.id])
        principals = [r[0] for r in conn.execute(
            "SELECT principal_id FROM public.identities WHERE issuer = %s AND subject = %s",
            [issuer_url(tenant), str(account.id)])]
        if principals:
            conn.execute("UPDATE public.users SET disabled = %s, updated_at = now() WHERE principal_id = ANY(%s)",
                         [disabled, principals])
        if disabled:
            _end_provider_sessions(conn, account.id)
            if principals:
                conn.execute(
                    "UPDATE appliance.auth_sessions SET revoked_at = now(), revoked_why = 'user_disabled' "
                    "WHERE principal_id = ANY(%s) AND revoked_at IS NULL", [principals])
        _event(conn, tenant, "identity.user_disabled" if disabled else "identity.user_enabled", account.id,
               {"email": account.email, "principals": [str(p) for p in principals]})
    return find(conn, email)


def _end_provider_sessions(conn: psycopg.Connection[Any], account_id: uuid.UUID) -> None:
    """The provider's sessions and grants of the account (its refresh tokens and device grants with them)."""
    grants = [r[0] for r in conn.execute(
        "SELECT id FROM identity.oidc_store WHERE model = 'Grant' AND payload->>'accountId' = %s",
        [str(account_id)])]
    conn.execute("DELETE FROM identity.oidc_store WHERE model = 'Session' AND payload->>'accountId' = %s",
                 [str(account_id)])
    if grants:
        conn.execute("DELETE FROM identity.oidc_store WHERE grant_id = ANY(%s) OR (model = 'Grant' AND id = ANY(%s))",
                     [grants, grants])
