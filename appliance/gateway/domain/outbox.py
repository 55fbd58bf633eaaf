"""The mention dispatcher: delivers `ready` outbox rows to the tenant's agent workers (contract: ACTIVATION.md).

A row is claimed with a short lease (`leased_until`) that the dispatcher keeps extending while it delivers (if
this gateway dies mid-delivery the row is due again within LEASE_S), then POSTed to `/activate/{agent_id}`.
A 2xx answer marks it `delivered`; an unknown or deleted agent, or a permanent refusal by the worker (400,
404, 410, 413, 422), marks it `gave_up` with the reason and an audit event; anything else (worker down, 5xx,
401/403 from a misconfigured credential, 429, a timeout) schedules a retry with exponential backoff. Claims
use FOR UPDATE SKIP LOCKED, so several gateway workers share the outbox without delivering a row twice at
once. Delivery is at least once: agent workers deduplicate by entry id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from appliance.audit.chain import AuditEvent
from appliance.gateway.core.config import Settings
from appliance.gateway.core.db import DATABASE_ERRORS, Database, Record
from appliance.gateway.domain.auditlog import AuditLog
from appliance.gateway.domain.models import to_json
from appliance.gateway.streams import stream_name
from appliance.gateway.upstream import Upstream, UpstreamError

log = logging.getLogger("appliance.gateway")

# 413: the activation (agent row and house configs) is larger than the workers take; resending cannot help.
PERMANENT_STATUSES = frozenset({400, 404, 410, 413, 422})

LEASE_S = 10.0

_CLAIM = (
    "UPDATE appliance.outbox o SET leased_until = now() + make_interval(secs => $1), attempts = o.attempts + 1 "
    "FROM appliance.thread_entries e "
    "WHERE e.id = o.entry_id AND o.id IN ("
    " SELECT id FROM appliance.outbox WHERE state = 'ready' AND next_attempt_at <= now()"
    " AND (leased_until IS NULL OR leased_until < now())"
    " ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "RETURNING o.id, o.entry_id, o.thread_id, o.house_id, o.agent_id, o.agent_name, o.mentioned_by, o.attempts, "
    "e.next_offset"
)


def backoff_s(attempts: int, cap: float) -> float:
    return float(min(cap, 0.5 * 2 ** max(0, attempts - 1)))


class Dispatcher:
    def __init__(self, db: Database, audit: AuditLog, settings: Settings, internal_token: Callable[[], str],
                 agents: Upstream) -> None:
        self.db = db
        self.audit = audit
        self.settings = settings
        self.internal_token = internal_token  # read at each delivery: a rotated token is followed
        self._wake = asyncio.Event()
        self.agents = agents  # the tenant's agent workers, over the gateway's lean loopback client
        self._inflight: set[asyncio.Task[None]] = set()
        self._leased: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.agents.close()

    async def keep_leases(self) -> None:
        """Extend the leases of the deliveries in flight, so they outlive LEASE_S only while this process does."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            if not self._leased:
                continue
            try:
                async with self.db.background() as conn:
                    await conn.execute(
                        "UPDATE appliance.outbox SET leased_until = now() + make_interval(secs => $1) "
                        "WHERE id = ANY($2) AND leased_until IS NOT NULL",
                        LEASE_S, list(self._leased),
                    )
            except DATABASE_ERRORS as exc:
                log.warning("outbox lease renewal failed: %s", type(exc).__name__)

    async def prune(self) -> int:
        """Delete finished activations older than the retention, in bounded batches; returns how many."""
        removed = 0
        while True:
            async with self.db.background() as conn:
                rows = await conn.fetch(
                    "DELETE FROM appliance.outbox WHERE id IN (SELECT id FROM appliance.outbox "
                    "WHERE state IN ('delivered', 'gave_up') AND finished_at < now() - make_interval(days => $1) "
                    "LIMIT $2) RETURNING id",
                    self.settings.outbox_retention_days, self.settings.outbox_prune_batch,
                )
            removed += len(rows)
            if len(rows) < self.settings.outbox_prune_batch:
                return removed

    async def keep_pruned(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info("outbox: deleted %d finished activations past their retention", removed)
            except DATABASE_ERRORS as exc:
                log.warning("outbox prune failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.outbox_prune_interval_s)

    async def run(self) -> None:
        while True:
            try:
                claimed = await self.claim()
            except DATABASE_ERRORS as exc:
                log.warning("outbox claim failed: %s", type(exc).__name__)
                claimed = []
            for row in claimed:
                task = asyncio.create_task(self.deliver(row))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if len(claimed) >= self._capacity():
                await asyncio.sleep(0)  # more may be due: claim again at once
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.dispatch_poll_s)
            self._wake.clear()

    def _capacity(self) -> int:
        return max(0, self.settings.dispatch_concurrency - len(self._inflight))

    async def claim(self) -> list[Record]:
        capacity = self._capacity()
        if capacity == 0:
            return []
        async with self.db.background() as conn:
            claimed = await conn.fetch(_CLAIM, LEASE_S, capacity)
        self._leased.update(int(row["id"]) for row in claimed)
        return claimed

    async def deliver(self, row: Record) -> None:
        try:
            await self._deliver(row)
        except DATABASE_ERRORS as exc:
            # The lease brings the row back; nothing is lost.
            log.warning("activation %s not settled: %s", row["id"], type(exc).__name__)
        finally:
            self._leased.discard(int(row["id"]))

    async def _deliver(self, row: Record) -> None:
        agent = await self.db.fetchrow(
            "SELECT id, house_id, name, handler, environment_id, config, deleted_at, updated_at "
            "FROM public.agents WHERE id = $1",
            row["agent_id"],
        )
        if agent is None or agent["deleted_at"] is not None or agent["house_id"] != row["house_id"]:
            await self._give_up(row, "agent deleted" if agent is not None else "unknown agent")
            return
        configs = await self.db.fetchall(
            "SELECT key, value, environment_id FROM public.configs WHERE house_id = $1 AND deleted_at IS NULL "
            "AND (environment_id IS NULL OR environment_id = $2) ORDER BY key, environment_id NULLS FIRST",
            row["house_id"], agent["environment_id"],
        )
        payload = activation_payload(row, agent, configs)
        try:
            response = await self.agents.request(
                "POST", f"/activate/{agent['id']}", body=json.dumps(payload).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {self.internal_token()}"},
                read_timeout=self.settings.agents_timeout_s,
            )
            await response.read()
        except UpstreamError as exc:  # timeouts included
            await self._retry(row, f"agent workers unreachable ({type(exc).__name__})")
            return
        status = response.status
        if 200 <= status < 300:
            await self.db.execute(
                "UPDATE appliance.outbox SET state = 'delivered', finished_at = now(), last_error = NULL, "
                "leased_until = NULL WHERE id = $1",
                row["id"],
            )
        elif status in PERMANENT_STATUSES:
            await self._give_up(row, f"refused by the agent workers ({status})")
        else:
            await self._retry(row, f"agent workers answered {status}")

    async def _retry(self, row: Record, reason: str) -> None:
        delay = backoff_s(int(row["attempts"]), self.settings.dispatch_backoff_max_s)
        await self.db.execute(
            "UPDATE appliance.outbox SET next_attempt_at = now() + make_interval(secs => $1), last_error = $2, "
            "leased_until = NULL WHERE id = $3 AND state = 'ready'",
            delay, reason, row["id"],
        )

    async def _give_up(self, row: Record, reason: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE appliance.outbox SET state = 'gave_up', last_error = $1, finished_at = now(), "
                "leased_until = NULL WHERE id = $2",
                reason, row["id"],
            )
            await self.audit.in_transaction(conn, AuditEvent(
                "system", "agent.activation.gave_up", row["house_id"], f"agent:{row['agent_id']}",
                {"entry_id": str(row["entry_id"]), "thread_id": str(row["thread_id"]), "agent_name": row["agent_name"],
                 "reason": reason},
            ))


def activation_payload(row: Record | Mapping[str, Any], agent: Record | Mapping[str, Any],
                       configs: list[Record] | list[dict[str, Any]]) -> dict[str, Any]:
    """The body of POST /activate/{agent_id} (ACTIVATION.md): the agent's current config and the event."""
    merged: dict[str, Any] = {}
    for item in configs:  # house-wide first, then the agent's environment overrides
        merged[item["key"]] = item["value"]
    return {
        "agent": {
            "id": str(agent["id"]),
            "house_id": str(agent["house_id"]),
            "name": agent["name"],
            "handler": agent["handler"],
            "environment_id": to_json(agent["environment_id"]),
            "config": agent["config"],
            "updated_at": to_json(agent["updated_at"]),
        },
        "configs": merged,
        "event": {
            "type": "mention",
            "activation_id": int(row["id"]),
            "attempt": int(row["attempts"]),
            "house_id": str(row["house_id"]),
            "thread_id": str(row["thread_id"]),
            "stream": stream_name(row["thread_id"]),
            "entry_id": str(row["entry_id"]),
            "offset": row["next_offset"],
            "mentioned_by": str(row["mentioned_by"]),
            "agent_name": row["agent_name"],
        },
    }
