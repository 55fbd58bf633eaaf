"""The objects one gateway process lives with: settings, pool, keyring, clients and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from appliance.config import EMBEDDED_ISSUER_NAME, TenantConfig
from appliance.gateway.core.config import Settings
from appliance.gateway.core.db import Database
from appliance.gateway.core.listener import Listener
from appliance.gateway.core.ratelimit import RateLimiter
from appliance.gateway.core.security import Keyring
from appliance.gateway.domain.access_cache import AccessCache
from appliance.gateway.domain.auditlog import AuditLog
from appliance.gateway.domain.entries import Entries
from appliance.gateway.domain.outbox import Dispatcher
from appliance.gateway.identity import events as identity_events
from appliance.gateway.identity.bearer import IssuerBearers
from appliance.gateway.identity.issuers import Issuers
from appliance.gateway.streams import StreamsClient
from appliance.gateway.upstream import Upstream
from appliance.secretfile import SecretFile

log = logging.getLogger("appliance.gateway")


class Gateway:
    def __init__(self, tenant: TenantConfig) -> None:
        self.tenant = tenant
        self.settings = settings = Settings.from_tenant(tenant)
        self.db = Database(settings.db_conninfo, lambda: tenant.read_secret("db_gateway_password"),
                           settings.db_pool_size)
        self.keyring = Keyring.for_tenant(tenant)
        # One listening connection for every channel the gateway follows (the access cache's, the identity
        # provider's).
        self.listener = Listener(self.db.dedicated)
        self.access = AccessCache(self.db, self.listener, settings.access_cache_ttl_s)
        self.audit = AuditLog(self.db, grant_window_s=settings.read_grant_window_s)
        bind = tenant.common.bind_address
        self.streams = StreamsClient(bind, tenant.port("streams"))
        self.sync = Upstream(bind, tenant.port("sync"))
        # Followed across rotations (`appliance secret rotate`, appliance.secretfile): no restart needed. The
        # JWT signing key has its own keyring, which watches its file.
        self._sync_secret = SecretFile(tenant.secret_path("sync_secret"))
        self._encryption_key = SecretFile(tenant.secret_path("secrets_encryption_key"))
        self.dispatcher = Dispatcher(self.db, self.audit, settings,
                                     SecretFile(tenant.secret_path("agents_internal_token")).value,
                                     Upstream(bind, tenant.port("agents")))
        self.entries = Entries(self.db, self.streams, self.audit, self.dispatcher.wake)
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        # Before authentication the caller is only an address: failed tokens and API key exchanges share it.
        self.anonymous_limiter = RateLimiter(max(60, settings.rate_limit_per_minute // 10))
        # People's logins: the tenant's OIDC issuers, and their tokens used as bearer tokens.
        self.issuers = Issuers(tenant)
        self.issuer_bearers = IssuerBearers(self.db, self.access.forget_principal)
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def sync_secret(self) -> str:
        return self._sync_secret.value()

    def encryption_key(self) -> str:
        return self._encryption_key.value()

    async def start(self) -> None:
        # Kept for callers outside the event loop (tests, diagnostics) that need to run something on it.
        self.loop = asyncio.get_running_loop()
        self.audit.start()
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="outbox-dispatcher"))
        self._tasks.append(asyncio.create_task(self.dispatcher.keep_leases(), name="outbox-leases"))
        self._tasks.append(asyncio.create_task(self.dispatcher.keep_pruned(), name="outbox-prune"))
        self._tasks.append(asyncio.create_task(self.entries.run_recovery(), name="entry-recovery"))
        if self.tenant.identity.embedded:
            local = self.issuers.by_name[EMBEDDED_ISSUER_NAME]
            wakeup = identity_events.follow(self.listener, local.forget_keys)
            self._tasks.append(asyncio.create_task(identity_events.run(self.db, wakeup), name="identity-events"))
        self.listener.start()

    async def stop(self) -> None:
        await self.entries.drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.dispatcher.close()
        await self.issuers.close()
        await self.listener.stop()
        await self.audit.stop()
        await self.streams.close()
        await self.sync.close()
        await self.db.close()
