"""The gateway's settings, all derived from the tenant config model (appliance/config.py): nothing here is
recomputed elsewhere, and nothing here is a secret (secrets are read from the tenant's files when used)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import TenantConfig


def gateway_url(tenant: TenantConfig) -> str:
    """The tenant gateway's own URL: the JWT issuer (`iss`) of every token the tenant's key signs."""
    return f"http://{tenant.common.bind_address}:{tenant.port('gateway')}"


def previous_keys_file(tenant: TenantConfig) -> Path:
    """Public keys rotated out of service, still accepted until their grace period ends (JSON, no secrets)."""
    return tenant.secrets_dir / "jwt_previous_keys.json"


@dataclass(frozen=True)
class Settings:
    token_ttl_s: int
    rate_limit_per_minute: int
    streams_long_poll_s: float
    sync_long_poll_s: float
    agents_timeout_s: float
    db_conninfo: dict[str, Any]
    db_pool_size: int
    outbox_retention_days: int
    dispatch_concurrency: int
    read_grant_window_s: float = 0.0
    access_cache_ttl_s: float = 0.0
    # How often the dispatcher looks for due activations besides being woken by new entries.
    dispatch_poll_s: float = 1.0
    dispatch_backoff_max_s: float = 60.0
    # How often finished activations past their retention are deleted, and how many per statement.
    outbox_prune_interval_s: float = 3600.0
    outbox_prune_batch: int = 5000

    @classmethod
    def from_tenant(cls, tenant: TenantConfig) -> Settings:
        return cls(
            token_ttl_s=tenant.gateway.token_ttl_s,
            rate_limit_per_minute=tenant.gateway.rate_limit_per_minute,
            streams_long_poll_s=tenant.streams.long_poll_timeout_ms / 1000,
            sync_long_poll_s=tenant.sync.long_poll_timeout_ms / 1000,
            agents_timeout_s=tenant.agents.handler_timeout_s + 5,
            db_conninfo=tenant.pg_conninfo("gateway"),
            # Each request holds a connection for one short transaction at a time; long-polls hold none.
            db_pool_size=max(4, min(20, tenant.postgres.max_connections // 5)),
            dispatch_concurrency=tenant.agents.max_concurrency,
            outbox_retention_days=tenant.gateway.outbox_retention_days,
            read_grant_window_s=tenant.gateway.read_grant_window_s,
            access_cache_ttl_s=tenant.gateway.access_cache_ttl_s,
        )
