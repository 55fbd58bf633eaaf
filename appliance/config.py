"""The tenant config model: the one place that derives ports, paths, users and secret locations.

Defaults come from `roles/<component>/defaults/main.yml` (shared with the Ansible roles); inventory host data
overrides them per host (`<role>: {...}`) and per tenant (`tenants: {<id>: {<role>: {...}}}`). Every deploy,
template and `appliance` command reads a `HostConfig`/`TenantConfig` instead of recomputing anything.
"""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.roles import role_defaults

# Tenant ids become OS user names (`tenant-<id>`, at most 32 chars), bucket names (`<id>-audit`, S3 rules) and
# path components, so they are kept to lowercase letters, digits and inner hyphens.
TENANT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TENANT_ID_MAX_LEN = 24


class ConfigError(ValueError):
    """An inventory or setting that cannot be deployed; the message names the problem."""


class _Settings(BaseModel):
    """Settings of one role: field names are the role's defaults without the `<role>_` prefix."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: ClassVar[str]
    # Settings that no longer exist: a host.json (or inventory) that still names one loads, without it.
    retired: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _missing_from_defaults(cls, data: Any) -> Any:
        # A host.json written before a setting existed still loads: the setting takes its role default, which is
        # what the deploy would have resolved (build() merges the defaults itself, so this only fills gaps).
        if isinstance(data, dict):
            return {**cls.defaults(), **{k: v for k, v in data.items() if k not in cls.retired}}
        return data

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        prefix = cls.role + "_"
        raw = role_defaults(cls.role)
        unknown = [k for k in raw if not k.startswith(prefix) or k[len(prefix) :] not in cls.model_fields]
        if unknown:
            raise ConfigError(f"roles/{cls.role}/defaults/main.yml: unknown settings {unknown}")
        return {k[len(prefix) :]: v for k, v in raw.items()}

    @classmethod
    def build(cls, *overrides: dict[str, Any] | None, where: str = "") -> _Settings:
        merged = cls.defaults()
        for layer in overrides:
            if layer:
                merged.update(layer)
        try:
            return cls(**merged)
        except ValidationError as exc:
            raise ConfigError(f"{where or cls.role} settings: {_explain(exc)}") from None


# systemd's MemoryMax= values the settings allow: bytes with an optional K/M/G/T suffix, or no limit.
MEMORY_MAX_PATTERN = r"^(infinity|[1-9][0-9]*[KMGT]?)$"

# A DNS name of lowercase labels (hostnames, the appliance's domain).
DNS_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
# An origin as browsers send it: scheme, host and an optional port, nothing else.
ORIGIN_PATTERN = re.compile(r"^https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")


# The front door's OS user; gateways believe X-Forwarded-For only from connections this user made.
FRONTDOOR_USER = "appliance-frontdoor"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def frontdoor_state_dir(common: CommonSettings) -> Path:
    return common.state_root / "frontdoor"


def frontdoor_upstreams_dir(common: CommonSettings) -> Path:
    return frontdoor_state_dir(common) / "upstreams"


def pg_bin_dir(version: int) -> Path:
    """Where a Postgres version's programs are (Debian's layout: the postgresql-<version> packages)."""
    return Path(f"/usr/lib/postgresql/{version}/bin")


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


class CommonSettings(_Settings):
    role: ClassVar[str] = "appliance"
    install_root: Path
    state_root: Path
    tenants_root: Path
    config_dir: Path
    port_base: int = Field(ge=1024, le=65000)
    ports_per_tenant: int = Field(ge=5, le=100)
    service_manager: Literal["auto", "systemd", "supervisor"]
    bind_address: str
    domain: str = Field(pattern=DNS_NAME_PATTERN)
    port_firewall: bool
    health_timeout_s: int = Field(gt=0)
    # The air-gapped install (appliance/offline): a signed bundle on the controller and the operator's public
    # key (a PEM file's path on the controller, or the PEM text). Controller-side only: not in host.json, so
    # a new bundle changes what is installed, never the resolved config the services read.
    bundle: str = Field(default="", exclude=True)
    bundle_public_key: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _bundle_needs_its_key(self) -> CommonSettings:
        if self.bundle and not self.bundle_public_key.strip():
            raise ValueError("bundle is set but bundle_public_key is empty: the deploy verifies the bundle with it")
        return self

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        # The common role's settings carry the `appliance_` prefix.
        raw = role_defaults("common")
        return {k.removeprefix("appliance_"): v for k, v in raw.items()}

    @field_validator("bind_address")
    @classmethod
    def _loopback_only(cls, address: str) -> str:
        # Postgres, sync, streams and agents listen here and only the gateway authenticates its callers: a
        # LAN address would publish all of them. The front door is how clients reach a tenant.
        if not is_loopback(address):
            raise ValueError(
                f"{address!r} is not a loopback address: it would expose every tenant's postgres, sync, streams "
                "and agents beyond this host; keep it 127.0.0.1 and publish tenants through the front door "
                "(frontdoor.bind_address)"
            )
        return address


class PostgresSettings(_Settings):
    role: ClassVar[str] = "postgres"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    version: int
    port_offset: int = Field(ge=0)
    database: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    max_connections: int = Field(ge=10)
    shared_buffers: str = Field(pattern=r"^\d+(kB|MB|GB)$")
    max_wal_senders: int = Field(ge=1)
    max_replication_slots: int = Field(ge=1)
    max_slot_wal_keep_size: str = Field(pattern=r"^(-1|\d+(kB|MB|GB|TB))$")
    checkpoint_timeout: str = Field(pattern=r"^\d+(s|min|h)$")
    log_min_duration_statement_ms: int


class StreamsSettings(_Settings):
    role: ClassVar[str] = "streams"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    # The server's version is what roles/streams/files/package.json pins (and npm's lock beside it), the one
    # place npm reads it; a setting of that name changed nothing.
    retired: ClassVar[frozenset[str]] = frozenset({"server_version"})
    port_offset: int = Field(ge=0)
    long_poll_timeout_ms: int = Field(ge=100, le=300_000)


class SyncRuntime(StrEnum):
    auto = "auto"
    embedded = "embedded"
    electric = "electric"


class SyncSettings(_Settings):
    role: ClassVar[str] = "sync"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    runtime: SyncRuntime
    port_offset: int = Field(ge=0)
    long_poll_timeout_ms: int = Field(ge=100, le=300_000)
    electric_image: str
    publication: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    slot: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    chunk_bytes: int = Field(ge=1024, le=1 << 30)


class GatewaySettings(_Settings):
    role: ClassVar[str] = "gateway"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    port_offset: int = Field(ge=0)
    workers: int = Field(ge=1, le=64)
    token_ttl_s: int = Field(ge=30)
    key_rotation_grace_s: int = Field(ge=0)
    max_body_bytes: int = Field(ge=1024)
    rate_limit_per_minute: int = Field(ge=1)
    outbox_retention_days: int = Field(ge=1)
    read_grant_window_s: float = Field(ge=0, le=3600)
    access_cache_ttl_s: float = Field(ge=0, le=3600)
    cors_origins: tuple[str, ...]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin == "*" or not ORIGIN_PATTERN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: give scheme://host[:port] (lowercase, no path; '*' is not "
                    "allowed, the API answers with credentials)"
                )
        return origins


class AgentsSettings(_Settings):
    role: ClassVar[str] = "agents"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    port_offset: int = Field(ge=0)
    max_concurrency: int = Field(ge=1)
    max_concurrency_per_agent: int = Field(ge=1)
    handler_timeout_s: float = Field(gt=0)
    webhook_timeout_s: float = Field(gt=0)
    webhook_retries: int = Field(ge=0)
    webhook_max_response_bytes: int = Field(ge=1024)


# The embedded provider's name among a tenant's issuers (/api/auth/login?issuer=local).
EMBEDDED_ISSUER_NAME = "local"
HOUSE_ROLES = ("owner", "admin", "member")


class RoleGrant(BaseModel):
    """A claim value that makes a person a member of a house with a role (`identity.issuers[].roles`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    claim: str = Field(min_length=1, max_length=100)
    value: str = Field(min_length=1, max_length=200)
    house: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    role: Literal["owner", "admin", "member"]


# Signature algorithms an issuer may be allowed: asymmetric only (`none` and HS* would let anyone holding the
# public key, or nothing, sign).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class IssuerSettings(BaseModel):
    """An OIDC issuer whose people may log in to the tenant (`identity.issuers[]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    issuer: str = Field(pattern=r"^https://[^\s#?]+$")
    client_id: str = Field(min_length=1, max_length=200)
    client_secret_file: str = Field(pattern=r"^/\S+$")
    subject_claim: str = Field(default="sub", min_length=1, max_length=100)
    audience: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    roles: tuple[RoleGrant, ...] = ()
    ca_file: str = Field(default="", pattern=r"^(/\S+)?$")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not algorithms:
            raise ValueError(f"algorithms {bad or '[]'} not accepted; choose from {list(ASYMMETRIC_ALGORITHMS)}")
        return algorithms

    @property
    def expected_audience(self) -> str:
        return self.audience or self.client_id


class IdentitySettings(_Settings):
    role: ClassVar[str] = "identity"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    embedded: bool
    port_offset: int = Field(ge=0)
    issuers: tuple[IssuerSettings, ...]
    access_token_ttl_s: int = Field(ge=30, le=86400)
    refresh_ttl_s: int = Field(ge=60)
    cookie_samesite: Literal["strict", "lax", "none"]
    login_ttl_s: int = Field(ge=30, le=3600)
    jwks_refetch_min_s: int = Field(ge=1)
    login_max_failures: int = Field(ge=1)
    login_lockout_s: int = Field(ge=1)
    login_per_client_per_minute: int = Field(ge=1)
    argon2_memory_kib: int = Field(ge=8192)
    argon2_time_cost: int = Field(ge=1)
    device_code_ttl_s: int = Field(ge=60)
    setup_link_ttl_s: int = Field(ge=300)
    session_ttl_s: int = Field(ge=60)

    @model_validator(mode="after")
    def _unique_issuers(self) -> IdentitySettings:
        names = [i.name for i in self.issuers]
        if EMBEDDED_ISSUER_NAME in names:
            raise ValueError(f"issuer name {EMBEDDED_ISSUER_NAME!r} is the embedded provider's")
        if len(set(names)) != len(names):
            raise ValueError("an issuer name is listed twice")
        urls = [i.issuer for i in self.issuers]
        if len(set(urls)) != len(urls):
            raise ValueError("an issuer URL is listed twice")
        return self


class AuditSettings(_Settings):
    role: ClassVar[str] = "audit"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    retention_days: int = Field(ge=1)
    batch_max_events: int = Field(ge=1)
    batch_max_age_s: float = Field(gt=0)


class BackupSettings(_Settings):
    role: ClassVar[str] = "backup"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    archive_timeout_s: int = Field(ge=1)
    full_schedule: str
    diff_schedule: str
    bundle_schedule: str
    retention_full: int = Field(ge=1)


class FrontdoorTls(StrEnum):
    internal = "internal"
    files = "files"
    acme = "acme"


class FrontdoorSettings(_Settings):
    """The host's front door; the fields in TENANT_FIELDS may differ per tenant, the rest are the host's."""

    role: ClassVar[str] = "frontdoor"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    TENANT_FIELDS: ClassVar[frozenset[str]] = frozenset({"hostnames", "tls", "cert_file", "key_file"})
    enabled: bool
    bind_address: str
    https_port: int = Field(ge=1, le=65535)
    http_port: int = Field(ge=1, le=65535)
    hsts_max_age_s: int = Field(ge=0)
    acme_email: str
    acme_ca: str = Field(pattern=r"^(https://\S+)?$")
    acme_ca_root: str = Field(pattern=r"^(/\S+)?$")
    idle_timeout_s: int = Field(ge=1)
    hostnames: tuple[str, ...]
    tls: FrontdoorTls
    cert_file: str
    key_file: str

    @field_validator("bind_address")
    @classmethod
    def _an_address(cls, address: str) -> str:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
        return address

    @field_validator("hostnames")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not re.match(DNS_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a DNS name (lowercase labels separated by dots)")
        if len(set(names)) != len(names):
            raise ValueError("a hostname is listed twice")
        return names

    @model_validator(mode="after")
    def _tls_files(self) -> FrontdoorSettings:
        if self.https_port == self.http_port:
            raise ValueError("https_port and http_port must differ")
        if self.tls is FrontdoorTls.files:
            for name in ("cert_file", "key_file"):
                if not getattr(self, name).startswith("/"):
                    raise ValueError(f"tls: files needs {name}, an absolute path on the host")
        return self


# SeaweedFS puts each service's gRPC port this far above its HTTP port (weed's own rule, not a setting).
SEAWEED_GRPC_PORT_OFFSET = 10000


class ObjectStoreSettings(_Settings):
    role: ClassVar[str] = "objectstore"
    memory_max: str = Field(pattern=MEMORY_MAX_PATTERN)
    mode: Literal["embedded", "external"]
    seaweedfs_version: str
    s3_port: int
    master_port: int
    volume_port: int
    filer_port: int
    admin_port: int
    endpoint: str
    region: str
    ca_file: str
    bind_address: str
    dns_name: str = Field(pattern=r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)?$")
    max_volumes: int = Field(ge=16, le=100000)

    @model_validator(mode="after")
    def _external_needs_endpoint(self) -> ObjectStoreSettings:
        if self.mode == "external" and not self.endpoint.startswith("https://"):
            raise ValueError("an external object store needs an https:// endpoint")
        if self.mode == "embedded" and not self.loopback and not self.dns_name:
            raise ValueError(
                f"a store listening on {self.bind_address} needs dns_name: tenant hosts and pgBackRest reach it "
                "by a name its certificate carries"
            )
        return self

    @property
    def loopback(self) -> bool:
        return self.bind_address.startswith("127.") or self.bind_address == "localhost"

    def ports(self) -> dict[str, int]:
        """Host ports the embedded store occupies, each with its gRPC twin (SeaweedFS: port + 10000)."""
        if self.mode != "embedded":
            return {}
        base = {"s3": self.s3_port, "master": self.master_port, "volume": self.volume_port,
                "filer": self.filer_port, "admin": self.admin_port}
        return base | {f"{name}-grpc": port + SEAWEED_GRPC_PORT_OFFSET for name, port in base.items()}


# The roles a tenant may override, in the order they come up on a host.
TENANT_ROLES: dict[str, type[_Settings]] = {
    "postgres": PostgresSettings,
    "streams": StreamsSettings,
    "sync": SyncSettings,
    "gateway": GatewaySettings,
    "agents": AgentsSettings,
    "audit": AuditSettings,
    "backup": BackupSettings,
    "identity": IdentitySettings,
}

# Components with a port of their own in the tenant's block.
PORTED_COMPONENTS = ("postgres", "streams", "sync", "gateway", "agents", "identity")

# Database roles every tenant cluster has (besides its superuser); sync needs REPLICATION for logical decoding.
DB_ROLES: dict[str, dict[str, bool]] = {
    "gateway": {"replication": False, "login": True},
    "sync": {"replication": True, "login": True},
    # The agent workers read what they need from their activations and the streams server; their role keeps its
    # grants (for a worker that would one day read the database) but cannot log in, and has no password.
    "agents": {"replication": False, "login": False},
    "audit": {"replication": False, "login": True},
    # The embedded OIDC provider: its own schema (accounts, grants, sessions) and nothing else.
    "identity": {"replication": False, "login": True},
}
LOGIN_ROLES = tuple(role for role, attrs in DB_ROLES.items() if attrs["login"])

# Components whose processes run under an OS user of their own, `t-<id>-<suffix>` (issue 20; at most 32 chars
# with the longest tenant id). Postgres, pgBackRest and the backup scheduler run as the tenant's user
# (`tenant-<id>`): pgBackRest must be the cluster's owner, and the backup reads every component's data and secrets.
OWN_USER_COMPONENTS: dict[str, str] = {
    "agents": "agent", "gateway": "gw", "sync": "sync", "streams": "strm", "identity": "idp", "audit": "audit",
}
DB_SUPERUSER = "postgres"


class SecretKind(StrEnum):
    password = "password"  # 32 random url-safe bytes
    token = "token"  # 32 random url-safe bytes, for bearer secrets
    key32 = "key32"  # 32 random bytes, base64 (symmetric keys)
    ed25519 = "ed25519"  # PEM private key
    s3_access_key = "s3_access_key"  # 20 uppercase alphanumerics, as S3 access keys look
    jwks = "jwks"  # a JSON Web Key Set of private signing keys (EdDSA and RS256), for the OIDC provider


class S3KeyPair(NamedTuple):
    """One of a tenant's S3 key pairs: the one component that uses it, which is also the one bucket it reaches
    (`<id>-audit`, `<id>-backup`), and the two secret files that hold it. Issue 20: only the audit shipper's
    identity may write the audit bucket, only the backup's the backup bucket, so each has a pair of its own."""

    component: str
    access_key: str  # secret file names
    secret_key: str

    @property
    def files(self) -> tuple[str, str]:
        return (self.access_key, self.secret_key)

    def bucket(self, tenant: TenantConfig) -> str:
        return tenant.audit_bucket if self.component == "audit" else tenant.backup_bucket


# The audit shipper's pair keeps the file names the single pair had, so hosts deployed before keep its keys.
AUDIT_S3_KEYS = S3KeyPair("audit", "s3_access_key", "s3_secret_key")
BACKUP_S3_KEYS = S3KeyPair("backup", "backup_s3_access_key", "backup_s3_secret_key")
S3_KEY_PAIRS = (AUDIT_S3_KEYS, BACKUP_S3_KEYS)

# Every secret a tenant has, generated on the host at first deploy and reused forever after.
TENANT_SECRETS: dict[str, SecretKind] = {
    "db_superuser_password": SecretKind.password,
    **{f"db_{role}_password": SecretKind.password for role in LOGIN_ROLES},
    "sync_secret": SecretKind.token,
    "agents_internal_token": SecretKind.token,
    "jwt_signing_key": SecretKind.ed25519,
    "secrets_encryption_key": SecretKind.key32,
    "backup_cipher_passphrase": SecretKind.password,
    **{name: kind for pair in S3_KEY_PAIRS
       for name, kind in zip(pair.files, (SecretKind.s3_access_key, SecretKind.password), strict=True)},
    # The embedded OIDC provider's signing keys, its cookie keys, and the gateway's secret as its client.
    "identity_jwks": SecretKind.jwks,
    "identity_cookie_keys": SecretKind.token,
    "identity_gateway_client_secret": SecretKind.token,
}


class TenantInventory(BaseModel):
    """What the inventory says of one tenant: its slot and any overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    slot: int = Field(ge=0, le=999)
    ports: dict[str, int] = Field(default_factory=dict)
    postgres: dict[str, Any] | None = None
    streams: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None
    gateway: dict[str, Any] | None = None
    agents: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    backup: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    frontdoor: dict[str, Any] | None = None

    @field_validator("frontdoor")
    @classmethod
    def _tenant_frontdoor_fields(cls, frontdoor: dict[str, Any] | None) -> dict[str, Any] | None:
        host_only = sorted(set(frontdoor or {}) - FrontdoorSettings.TENANT_FIELDS)
        if host_only:
            raise ValueError(
                f"{host_only} are settings of the host's front door (set them under the host's frontdoor); "
                f"a tenant may set {sorted(FrontdoorSettings.TENANT_FIELDS)}"
            )
        return frontdoor

    @field_validator("ports")
    @classmethod
    def _known_components(cls, ports: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(ports) - set(PORTED_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; known: {list(PORTED_COMPONENTS)}")
        for name, port in ports.items():
            if not 1024 <= port <= 65535:
                raise ValueError(f"{name} port {port} is outside 1024-65535")
        return ports


def validate_tenant_id(tenant_id: object) -> str:
    if not isinstance(tenant_id, str):
        raise ConfigError(f"tenant id {tenant_id!r} must be a string")
    if len(tenant_id) < 2 or len(tenant_id) > TENANT_ID_MAX_LEN:
        raise ConfigError(f"tenant id {tenant_id!r} must be 2 to {TENANT_ID_MAX_LEN} characters long")
    if not TENANT_ID_PATTERN.match(tenant_id):
        raise ConfigError(
            f"tenant id {tenant_id!r} may hold only lowercase letters, digits and inner hyphens, "
            "and must start with a letter"
        )
    return tenant_id


class TenantConfig(BaseModel):
    """One tenant on one host, fully resolved."""

    model_config = ConfigDict(frozen=True)
    id: str
    slot: int
    common: CommonSettings
    postgres: PostgresSettings
    streams: StreamsSettings
    sync: SyncSettings
    gateway: GatewaySettings
    agents: AgentsSettings
    audit: AuditSettings
    backup: BackupSettings
    objectstore: ObjectStoreSettings
    # A host.json written before the front door existed loads with the front door's defaults.
    frontdoor: FrontdoorSettings = Field(default_factory=lambda: FrontdoorSettings.build())
    # Likewise for a host.json written before the identity plane existed.
    identity: IdentitySettings = Field(default_factory=lambda: IdentitySettings.build())
    port_overrides: dict[str, int] = Field(default_factory=dict)

    # Identity and places --------------------------------------------------------------------------------
    @property
    def user(self) -> str:
        """The tenant's own OS user and group: its cluster, its data and every component but the agents."""
        return f"tenant-{self.id}"

    def os_user(self, component: str) -> str:
        """The OS user `component`'s processes run as: its own (OWN_USER_COMPONENTS), or the tenant's."""
        suffix = OWN_USER_COMPONENTS.get(component)
        return f"t-{self.id}-{suffix}" if suffix else self.user

    @property
    def own_users(self) -> dict[str, str]:
        """Component -> its own OS user, for the components that have one."""
        return {component: self.os_user(component) for component in OWN_USER_COMPONENTS}

    @property
    def agents_user(self) -> str:
        """The agent workers' own OS user (they run third-party handlers): its own agents dir, the internal
        token, the streams port; nothing else of the tenant. At most 32 chars with the longest tenant id."""
        return self.os_user("agents")

    @property
    def gateway_user(self) -> str:
        """The gateway's own OS user (it faces every caller): the secrets it uses, its front-door socket dir, the
        ports it calls; nothing else of the tenant."""
        return self.os_user("gateway")

    @property
    def root(self) -> Path:
        return self.common.tenants_root / self.id

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def pg_data(self) -> Path:
        return self.root / "postgres" / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.root / "run" / "postgres"

    @property
    def streams_data(self) -> Path:
        return self.root / "streams"

    @property
    def sync_data(self) -> Path:
        return self.root / "sync"

    @property
    def identity_data(self) -> Path:
        """The embedded provider's own dir (its runtime config)."""
        return self.root / "identity"

    @property
    def agents_data(self) -> Path:
        return self.root / "agents"

    @property
    def backup_dir(self) -> Path:
        return self.root / "backup"

    @property
    def config_file(self) -> Path:
        """This tenant's view of the host config, written by the deploy (no secrets, no other tenant in it)."""
        return tenant_view_file(self.common.config_dir, self.id)

    # Front door ------------------------------------------------------------------------------------------
    @property
    def hostnames(self) -> tuple[str, ...]:
        """The names clients reach this tenant by (the first is its URL's)."""
        return self.frontdoor.hostnames or (f"{self.id}.{self.common.domain}",)

    @property
    def url(self) -> str:
        port = self.frontdoor.https_port
        return f"https://{self.hostnames[0]}" + ("" if port == 443 else f":{port}")

    @property
    def gateway_socket(self) -> Path:
        """The gateway's socket for the front door: its directory is entered only by the gateway's user and the
        front door's group, which is how the gateway knows a caller there is the front door (loopback TCP
        cannot tell the front door from any other local user)."""
        return frontdoor_upstreams_dir(self.common) / self.id / "gateway.sock"

    @property
    def identity_socket(self) -> Path:
        """The embedded provider's socket for the front door: in a directory of its own beside the gateway's (each
        component's user owns its own; a tenant id has no dot, so `<id>.identity` is no other tenant's)."""
        return frontdoor_upstreams_dir(self.common) / f"{self.id}.identity" / "identity.sock"

    @property
    def frontdoor_socket_dirs(self) -> dict[str, Path]:
        """Component -> the directory of its front-door socket."""
        dirs = {"gateway": self.gateway_socket.parent}
        if self.identity.embedded:
            dirs["identity"] = self.identity_socket.parent
        return dirs

    def secret_path(self, name: str) -> Path:
        if name not in TENANT_SECRETS:
            raise KeyError(f"unknown secret {name!r}")
        return self.secrets_dir / name

    def read_secret(self, name: str) -> str:
        return self.secret_path(name).read_text().strip()

    def pg_bin(self, program: str) -> Path:
        return pg_bin_dir(self.postgres.version) / program

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    # Ports ------------------------------------------------------------------------------------------------
    def port(self, component: str) -> int:
        if component in self.port_overrides:
            return self.port_overrides[component]
        settings = getattr(self, component)
        return self.common.port_base + self.slot * self.common.ports_per_tenant + settings.port_offset

    @property
    def ports(self) -> dict[str, int]:
        return {component: self.port(component) for component in PORTED_COMPONENTS}

    # Object store ----------------------------------------------------------------------------------------
    @property
    def audit_bucket(self) -> str:
        return f"{self.id}-audit"

    @property
    def backup_bucket(self) -> str:
        return f"{self.id}-backup"

    # Connection strings (passwords are read from the secrets dir by whoever connects) --------------------
    def pg_conninfo(self, role: str, *, database: str | None = None, via_socket: bool = False) -> dict[str, Any]:
        """libpq keywords for `role` (a DB_ROLES name or DB_SUPERUSER), without the password."""
        return {
            "host": str(self.pg_socket_dir) if via_socket else self.common.bind_address,
            "port": self.port("postgres"),
            "user": role,
            "dbname": database or self.postgres.database,
        }

    def pg_password_secret(self, role: str) -> str:
        return "db_superuser_password" if role == DB_SUPERUSER else f"db_{role}_password"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: Path) -> TenantConfig:
        return cls.model_validate(json.loads(path.read_text()))


class HostConfig(BaseModel):
    """One host: its common settings, its object store role, and its tenants."""

    model_config = ConfigDict(frozen=True)
    name: str
    common: CommonSettings
    objectstore: ObjectStoreSettings
    frontdoor: FrontdoorSettings = Field(default_factory=lambda: FrontdoorSettings.build())
    # Inventory name of the host running the embedded store this host's tenants use ("" = this host).
    objectstore_host: str = ""
    tenants: tuple[TenantConfig, ...] = ()
    # On a vault host: the tenants of other hosts whose identities and buckets this host's store keeps.
    served_tenants: tuple[ServedTenant, ...] = ()
    # Digest of the appliance sources deployed; services running our code restart when it changes.
    source_digest: str = ""

    @property
    def runs_objectstore(self) -> bool:
        return self.objectstore.mode == "embedded" and not self.objectstore_host

    @property
    def host_file(self) -> Path:
        return self.common.config_dir / "host.json"

    def tenant_view(self, tenant_id: str) -> HostConfig:
        """This host as one of its tenants' processes may see it: that tenant alone (written beside host.json,
        readable by the tenant's group; host.json, which lists every tenant, is root's)."""
        return self.model_copy(update={"tenants": (self.tenant(tenant_id),), "served_tenants": ()})

    # The front door's places (on hosts with tenants) ---------------------------------------------------
    @property
    def runs_frontdoor(self) -> bool:
        return self.frontdoor.enabled and bool(self.tenants)

    @property
    def frontdoor_user(self) -> str:
        return FRONTDOOR_USER

    @property
    def frontdoor_state_dir(self) -> Path:
        """The front door's state on the host: caddy/ (its own), upstreams/ (gateways' sockets), log/ (root's)."""
        return frontdoor_state_dir(self.common)

    @property
    def frontdoor_root(self) -> Path:
        """Caddy's own state (ACME accounts and certificates, autosaved config); the front door's user only."""
        return self.frontdoor_state_dir / "caddy"

    @property
    def frontdoor_upstreams(self) -> Path:
        """Parent of every tenant's front-door socket directory (TenantConfig.gateway_socket)."""
        return frontdoor_upstreams_dir(self.common)

    @property
    def frontdoor_conf_dir(self) -> Path:
        """The Caddyfile, the front door CA (key 0600 root) and certs/ (the front door's user only)."""
        return self.common.config_dir / "frontdoor"

    @property
    def frontdoor_ca_cert(self) -> Path:
        return self.frontdoor_conf_dir / "ca.pem"

    @property
    def frontdoor_ca_key(self) -> Path:
        return self.frontdoor_conf_dir / "ca.key"

    @property
    def frontdoor_admin_socket(self) -> Path:
        """Caddy's admin API (reloads): a unix socket in the front door's own state, never a TCP port."""
        return self.frontdoor_root / "admin.sock"

    @property
    def frontdoor_certs_dir(self) -> Path:
        """The certificates and keys the front door serves (its user's, 0700)."""
        return self.frontdoor_conf_dir / "certs"

    def frontdoor_cert(self, tenant: TenantConfig) -> tuple[Path, Path]:
        """(certificate, key) the front door serves for `tenant` (issued here, or copied from the operator's)."""
        return self.frontdoor_certs_dir / f"{tenant.id}.pem", self.frontdoor_certs_dir / f"{tenant.id}.key"

    @property
    def frontdoor_default_cert(self) -> tuple[Path, Path]:
        """What the front door shows a client naming no tenant of this host: a certificate naming none either."""
        return self.frontdoor_certs_dir / "default.pem", self.frontdoor_certs_dir / "default.key"

    # The embedded object store's places (only used where it runs) -----------------------------------
    @property
    def objectstore_user(self) -> str:
        return "appliance-objectstore"

    @property
    def objectstore_root(self) -> Path:
        return self.common.state_root / "objectstore"

    @property
    def objectstore_data(self) -> Path:
        return self.objectstore_root / "data"

    @property
    def objectstore_conf_dir(self) -> Path:
        """s3.json, security.toml (JWT keys), the server key and cert; 0700, the store's user only."""
        return self.objectstore_root / "conf"

    @property
    def objectstore_admin_file(self) -> Path:
        """The store's admin S3 credentials (root only, never handed to tenant processes)."""
        return self.common.config_dir / "objectstore-admin.json"

    @property
    def ca_cert(self) -> Path:
        """The host CA that signs the embedded store's certificate; public, trusted by the appliance's clients."""
        return self.common.config_dir / "tls" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.common.config_dir / "tls" / "ca.key"

    @property
    def s3_endpoint(self) -> str:
        if self.objectstore.mode == "external":
            return self.objectstore.endpoint
        # A tenant host using a vault carries the vault's store settings (inventory_configs copies them).
        host = self.objectstore.dns_name or self.objectstore.bind_address
        return f"https://{host}:{self.objectstore.s3_port}"

    def store_tenants(self) -> list[TenantConfig]:
        """Every tenant whose identity and buckets this host's embedded store keeps."""
        return [*self.tenants, *(served.tenant for served in self.served_tenants)] if self.runs_objectstore else []

    def tenant(self, tenant_id: str) -> TenantConfig:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        raise ConfigError(f"no tenant {tenant_id!r} on host {self.name}")


class ServedTenant(BaseModel):
    """A tenant of another host, as the vault host that keeps its identity and buckets sees it."""

    model_config = ConfigDict(frozen=True)
    host: str
    tenant: TenantConfig


HostConfig.model_rebuild()

HOST_DATA_KEYS = {"tenants", "objectstore_host", "common", "objectstore", "frontdoor", "only_tenants"}
# Keys pyinfra connectors read from host data; they are not appliance settings.
CONNECTOR_KEY_PREFIXES = ("ssh_", "_", "docker_", "vagrant_", "local_", "chroot_", "winrm_")


def host_config(name: str, data: dict[str, Any]) -> HostConfig:
    """Resolve one inventory host's data into its config; raises ConfigError naming the problem."""
    unknown = sorted(k for k in data if k not in HOST_DATA_KEYS and not k.startswith(CONNECTOR_KEY_PREFIXES))
    if unknown:
        raise ConfigError(f"host {name}: unknown host data {unknown}; known: {sorted(HOST_DATA_KEYS)}")
    where = f"host {name}"
    common = CommonSettings.build(data.get("common"), where=f"{where}: common")
    objectstore = ObjectStoreSettings.build(data.get("objectstore"), where=f"{where}: objectstore")
    frontdoor_data = data.get("frontdoor")
    frontdoor = FrontdoorSettings.build(frontdoor_data, where=f"{where}: frontdoor")
    assert isinstance(common, CommonSettings) and isinstance(objectstore, ObjectStoreSettings)
    assert isinstance(frontdoor, FrontdoorSettings)
    tenants_data = data.get("tenants") or {}
    if not isinstance(tenants_data, dict):
        raise ConfigError(f"{where}: tenants must be a mapping of tenant id to settings")
    tenants: list[TenantConfig] = []
    for tenant_id, raw in tenants_data.items():
        validate_tenant_id(tenant_id)
        try:
            inv = TenantInventory.model_validate(raw or {})
        except ValidationError as exc:
            raise ConfigError(f"{where}: tenant {tenant_id}: {_explain(exc)}") from None
        roles = {
            role: model.build(getattr(inv, role), where=f"{where}: tenant {tenant_id}: {role}")
            for role, model in TENANT_ROLES.items()
        }
        tenant_frontdoor = FrontdoorSettings.build(frontdoor_data, inv.frontdoor,
                                                   where=f"{where}: tenant {tenant_id}: frontdoor")
        tenants.append(
            TenantConfig(
                id=tenant_id, slot=inv.slot, common=common, objectstore=objectstore, frontdoor=tenant_frontdoor,
                port_overrides=inv.ports, **roles,
            )
        )
    host = HostConfig(
        name=name, common=common, objectstore=objectstore, frontdoor=frontdoor,
        objectstore_host=str(data.get("objectstore_host") or ""), tenants=tuple(tenants),
    )
    _check_ports(host)
    return host


def _check_ports(host: HostConfig) -> None:
    """Every port on a host belongs to exactly one thing."""
    owners: dict[int, str] = {}

    def claim(port: int, owner: str) -> None:
        if port in owners:
            raise ConfigError(f"host {host.name}: port {port} is used by both {owners[port]} and {owner}")
        owners[port] = owner

    if host.runs_objectstore:
        for name, port in host.objectstore.ports().items():
            claim(port, f"objectstore {name}")
    if host.runs_frontdoor:
        claim(host.frontdoor.https_port, "frontdoor https")
        claim(host.frontdoor.http_port, "frontdoor http")
    names: dict[str, str] = {}
    for tenant in host.tenants:
        for hostname in tenant.hostnames if host.runs_frontdoor else ():
            if hostname in names:
                raise ConfigError(f"host {host.name}: hostname {hostname} is given to both {names[hostname]} and "
                                  f"{tenant.id}")
            names[hostname] = tenant.id
    slots: dict[int, str] = {}
    for tenant in host.tenants:
        if tenant.slot in slots:
            raise ConfigError(
                f"host {host.name}: tenants {slots[tenant.slot]} and {tenant.id} both have slot {tenant.slot}"
            )
        slots[tenant.slot] = tenant.id
        for component, port in tenant.ports.items():
            if not 1024 <= port <= 65535:
                raise ConfigError(f"host {host.name}: tenant {tenant.id} {component} port {port} is out of range")
            claim(port, f"tenant {tenant.id} {component}")


def inventory_configs(hosts: dict[str, dict[str, Any]]) -> dict[str, HostConfig]:
    """Resolve and cross-check a whole inventory (host name -> host data) before anything is touched."""
    if not hosts:
        raise ConfigError("the inventory lists no hosts")
    configs = {name: host_config(name, data) for name, data in hosts.items()}
    seen: dict[str, str] = {}
    for name, host in list(configs.items()):
        if host.objectstore_host:
            vault = configs.get(host.objectstore_host)
            if vault is None:
                raise ConfigError(
                    f"host {name}: objectstore_host {host.objectstore_host!r} is not a host of this inventory"
                )
            if not vault.runs_objectstore:
                raise ConfigError(
                    f"host {name}: objectstore_host {host.objectstore_host!r} does not run the embedded store"
                )
            if vault.objectstore.bind_address.startswith("127."):
                raise ConfigError(
                    f"host {name} uses the store on {host.objectstore_host}, which listens on loopback only: "
                    f"set objectstore.bind_address of {host.objectstore_host} to an address {name} can reach"
                )
            # The tenant host reaches the vault's store as the vault configures it: one source of truth.
            store = vault.objectstore
            configs[name] = host.model_copy(update={
                "objectstore": store,
                "tenants": tuple(t.model_copy(update={"objectstore": store}) for t in host.tenants),
            })
        for tenant in host.tenants:
            # Tenants share object store namespaces (buckets, identities), so ids are unique inventory-wide.
            if tenant.id in seen:
                raise ConfigError(f"tenant {tenant.id} is on both {seen[tenant.id]} and {name}")
            seen[tenant.id] = name
    for name, host in list(configs.items()):
        if host.objectstore_host:
            vault = configs[host.objectstore_host]
            served = vault.served_tenants + tuple(ServedTenant(host=name, tenant=t) for t in host.tenants)
            configs[host.objectstore_host] = vault.model_copy(update={"served_tenants": served})
    return configs


def default_config_dir() -> Path:
    """Where the deploy leaves host.json; APPLIANCE_CONFIG_DIR points commands elsewhere (tests, scratch)."""
    import os

    override = os.environ.get("APPLIANCE_CONFIG_DIR")
    return Path(override) if override else Path(CommonSettings.defaults()["config_dir"])


def load_host_config(config_dir: Path | None = None) -> HostConfig:
    """The resolved config the last deploy left on this host."""
    return _load_config_file((config_dir or default_config_dir()) / "host.json")


def _load_config_file(path: Path) -> HostConfig:
    try:
        return HostConfig.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: this host has not been deployed yet "
            "(run `pyinfra -y inventory/local.py deploy.py`)"
        ) from None
    except PermissionError:
        raise ConfigError(f"{path} is not readable by this user (host.json is root's; run this as root)") from None
    except ValidationError as exc:
        raise ConfigError(
            f"{path} does not match this version of the appliance ({_explain(exc)}): it was written by another "
            "version's deploy; redeploy this host with the version you are running"
        ) from None


def tenant_view_file(config_dir: Path, tenant_id: str) -> Path:
    """Where the deploy leaves `HostConfig.tenant_view(tenant_id)` (0640, root and the tenant's group)."""
    return config_dir / "tenants" / f"{validate_tenant_id(tenant_id)}.json"


def load_tenant(tenant_id: str) -> tuple[HostConfig, TenantConfig]:
    """This host's config and one of its tenants (ConfigError naming the tenant when the host has no such one).

    Root reads host.json; anyone else (a tenant's own services) reads the tenant's view of the host, which
    names no other tenant."""
    import os

    config_dir = default_config_dir()
    view = tenant_view_file(config_dir, tenant_id)
    # A config dir without views (a test rig's, or a host not yet redeployed by this version) has a host.json
    # that is still readable by the tenant: that is what such a host's services read until the deploy runs.
    host = load_host_config(config_dir) if os.geteuid() == 0 or not view.exists() else _load_config_file(view)
    return host, host.tenant(tenant_id)
