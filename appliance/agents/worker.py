"""The agent worker's core (no HTTP here): accept activations durably, run each agent's handler, and append its
reply to the thread's stream exactly once.

Exactly once, and why it holds across duplicate deliveries, kill -9 and a streams server that forgot its
idempotent-producer state (specs/durable-streams.md):

1. Accept: the activation is committed to the agent's inbox (store.py), keyed by the triggering entry id, before
   the gateway gets its 2xx. A second delivery of the same entry finds the row and changes nothing.
2. Run (at most `max_concurrency_per_agent` per agent, `max_concurrency` in all): read the thread from the
   stream. If a message with the reply's id is already there, the reply was appended by an earlier run that died
   before recording it: record that, run nothing. Else run the handler.
3. Prepare: if the handler changed its state, store the reply (or error entry) and the changes in one commit, so
   the state is kept exactly when this reply is the one appended.
4. Append the message to the stream, then record the row done with the returned offset. If the append fails
   (the streams server is down, or its answer is lost), the reply is prepared now and the row retried later.
5. A prepared row found again (after a crash, or after an append whose outcome is unknown) is finished by first
   looking in the stream after the triggering entry's offset for the reply id, and appending only if it is absent.
   A pending row found again (a run died, before or after appending) is step 2 again: the stream is looked at.

The reply id is derived from the agent and the triggering entry (models.reply_id), so whichever run appends, it
is the same message with the same id. Appends of one reply are serialised: one worker process per tenant (it
holds `worker.lock` in the agents dir) and at most one run per entry in it; every append but the first of a
reply is preceded by a look at the stream. So the stream's own producer state is never relied on.

A handler may run more than once for one entry (killed mid-handler, it runs again after the restart); its reply
is still appended once, and its state changes are committed only with the reply that is appended. An entry whose
handler has been started `MAX_RUNS` times without finishing (it takes the worker down) gets an error entry
instead of another run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from appliance.agents.handlers import (
    EXTERNAL,
    HISTORY_LIMIT,
    HandlerContext,
    HandlerError,
    HandlerRegistry,
    HandlerUnavailable,
    Reply,
    call_handler,
    default_registry,
)
from appliance.agents.models import ActivationRequest, AgentSpec
from appliance.agents.store import AgentState, AgentStore, InboxRow, QueueFull, dumps, store_path
from appliance.agents.threads import Around, ThreadViews
from appliance.audit.canonical import format_timestamp
from appliance.config import TenantConfig
from appliance.gateway.domain.models import MAX_ENTRY_TEXT, clean_json, clean_text
from appliance.gateway.streams import StreamError, StreamMissing, StreamsClient

log = logging.getLogger("appliance.agents")

MAX_RUNS: Final = 3
# Unfinished activations one agent may have queued before the worker answers 429 (the gateway retries later).
MAX_OPEN_PER_AGENT: Final = 1000
MAX_REPLY_BYTES: Final = 1 << 20
RETRY_BASE_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
LOCK_FILE: Final = "worker.lock"


class WorkerBusy(Exception):
    """The agent's queue is full: refuse for now (429) instead of growing without bound."""


class WorkerLocked(Exception):
    """Another worker process of this tenant holds the agents dir."""


class _RetryLater(Exception):
    """The streams server is unavailable: the row stays as it is and is tried again after a backoff."""


@dataclass(frozen=True)
class Outcome:
    state: str
    outcome: str | None
    duplicate: bool


def take_lock(path: Path) -> int:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkerLocked(f"another agents worker is running on {path.parent}") from None
    return fd


def entry_message(activation: ActivationRequest, kind: str, text: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """A thread entry authored by the agent, in the shape the gateway writes (ACTIVATION.md)."""
    message: dict[str, Any] = {
        "type": "entry",
        "id": str(activation.reply_id()),
        "thread_id": str(activation.event.thread_id),
        "kind": kind,
        "author": {"id": str(activation.agent.id), "kind": "agent"},
        "text": text,
        "mentions": [],
        "created_at": format_timestamp(datetime.now(UTC)),
        "reply_to": str(activation.event.entry_id),
    }
    if data is not None:
        message["data"] = data
    return message


def error_message(activation: ActivationRequest, agent_name: str, code: str, reason: str) -> dict[str, Any]:
    return entry_message(activation, "error", f"{agent_name} could not answer: {reason}",
                         {"error": {"code": code, "message": reason}})


def _has(messages: list[Any], message_id: str) -> bool:
    return any(isinstance(m, dict) and m.get("id") == message_id for m in messages)


class Worker:
    def __init__(self, tenant: TenantConfig, handlers: HandlerRegistry | None = None) -> None:
        self.tenant = tenant
        self.settings = tenant.agents
        self.agents_dir = tenant.agents_data
        bind = tenant.common.bind_address
        self.streams = StreamsClient(bind, tenant.port("streams"))
        self.threads = ThreadViews(self.streams)
        self.handlers = handlers or default_registry(self.agents_dir, self.settings)
        self.slots = asyncio.Semaphore(self.settings.max_concurrency)
        # Plain-function handlers run here. A thread cannot be stopped: one that overran its timeout keeps its
        # thread until it returns, so only other plain-function handlers can ever wait for these threads.
        self.handler_threads = ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="handler")
        self.runners: dict[uuid.UUID, AgentRunner] = {}
        self._lock_fd: int | None = None
        self._runner_lock = asyncio.Lock()

    async def start(self) -> None:
        self.agents_dir.mkdir(parents=True, exist_ok=True, mode=0o770)
        self._lock_fd = take_lock(self.agents_dir / LOCK_FILE)
        # Activations accepted before a crash or restart are resumed.
        for path in sorted(self.agents_dir.glob("agent-*.sqlite3")):
            try:
                agent_id = uuid.UUID(path.stem.removeprefix("agent-"))
            except ValueError:
                continue
            store = await asyncio.to_thread(AgentStore, path)
            await asyncio.to_thread(store.prune)
            if await asyncio.to_thread(store.count_open):
                self.runners[agent_id] = AgentRunner(self, agent_id, store)
                log.info("agent %s: resuming unfinished activations", agent_id)
            else:
                store.close()

    async def stop(self) -> None:
        runners = list(self.runners.values())
        for runner in runners:
            await runner.stop()
        self.runners.clear()
        await self.handlers.close()
        await self.streams.close()
        self.handler_threads.shutdown(wait=False, cancel_futures=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def runner(self, agent_id: uuid.UUID) -> AgentRunner:
        runner = self.runners.get(agent_id)
        if runner is not None:
            return runner
        async with self._runner_lock:
            if agent_id not in self.runners:
                store = await asyncio.to_thread(AgentStore, store_path(self.agents_dir, agent_id))
                self.runners[agent_id] = AgentRunner(self, agent_id, store)
            return self.runners[agent_id]

    async def accept(self, activation: ActivationRequest) -> Outcome:
        """Take durable responsibility for an activation (or recognise a duplicate); the handler runs later."""
        runner = await self.runner(activation.agent.id)
        try:
            accepted = await asyncio.to_thread(runner.store.accept, str(activation.event.entry_id),
                                               str(activation.event.thread_id), activation.model_dump(mode="json"),
                                               MAX_OPEN_PER_AGENT)
        except QueueFull:
            raise WorkerBusy from None
        runner.kick()
        return Outcome(accepted.state, accepted.outcome, duplicate=not accepted.fresh)

    def stats(self) -> dict[str, int]:
        return {"agents": len(self.runners), "running": sum(len(r.running) for r in self.runners.values()),
                "threads_cached": len(self.threads)}

    # One activation ---------------------------------------------------------------------------------------------
    async def process(self, store: AgentStore, row: InboxRow) -> None:
        """Bring one accepted activation to `done` (see the module's docstring for why each step is where it is).
        Raises _RetryLater when the streams server is unavailable."""
        entry_id = row.entry_id
        activation = ActivationRequest.model_validate(row.activation)
        reply_id = str(activation.reply_id())
        if row.state == "prepared" and row.reply is not None:
            # The reply may be in the stream already (the last append's outcome is unknown): look before appending.
            after, tail = await self._read(store, entry_id, activation, activation.event.offset)
            if tail is None:
                return
            if _has(after, reply_id):
                await self._finish(store, entry_id, "found", tail)
                return
            await self._append(store, entry_id, activation, row.reply)
            return
        try:
            around = await self.threads.around(activation.event.thread_id, activation.event.entry_id)
        except StreamMissing:
            await self._finish(store, entry_id, "thread_missing", None)
            return
        except StreamError as exc:
            raise _RetryLater(f"reading the thread failed ({exc.status})") from None
        if _has(around.after, reply_id):
            # Appended by a run that died before recording it (or before its prepare commit was kept).
            await self._finish(store, entry_id, "found", around.tail)
            return
        runs, last_agent, last_configs = store.claim(entry_id)  # a quick commit (store.py): on the loop
        # The agent as last activated: a queued activation runs with the freshest config the worker has seen.
        agent = AgentSpec.model_validate(last_agent) if last_agent else activation.agent
        configs = last_configs if last_agent else activation.configs
        if agent.handler == EXTERNAL:
            # The agent answers through the gateway on its own (README.md, external agents).
            await self._finish(store, entry_id, "external", None)
            return
        state = AgentState(store)
        if runs > MAX_RUNS:
            message = error_message(activation, agent.name, "worker_crashed",
                                    f"the worker stopped {MAX_RUNS} times while handling this")
        else:
            try:
                message = await self._handle(agent, configs, activation, around, state)
            except asyncio.CancelledError:
                # Stopped by a shutdown, not by the handler: this run does not count against MAX_RUNS.
                with contextlib.suppress(Exception):
                    store.uncount_run(entry_id)
                raise
        prepared = bool(state.changes)
        if prepared:
            # State changes are kept only with the reply that carries them: both committed before the append.
            await asyncio.to_thread(store.prepare, entry_id, message, dict(state.changes))
        try:
            # Nobody else appends this reply (one worker, one run per entry), and it was not in the stream just now.
            await self._append(store, entry_id, activation, message)
        except _RetryLater:
            if not prepared:
                # Keep the decided reply, so the retry appends it instead of running the handler again.
                await asyncio.to_thread(store.prepare, entry_id, message, {})
            raise

    async def _read(self, store: AgentStore, entry_id: str, activation: ActivationRequest, offset: str
                    ) -> tuple[list[Any], str | None]:
        """The thread's messages after `offset` and the tail; tail None when the stream is gone (then finished)."""
        try:
            return await self.streams.read_after(activation.event.thread_id, offset)
        except StreamMissing:
            await self._finish(store, entry_id, "thread_missing", None)
            return [], None
        except StreamError as exc:
            raise _RetryLater(f"reading the thread failed ({exc.status})") from None

    async def _handle(self, agent: AgentSpec, configs: dict[str, Any], activation: ActivationRequest,
                      around: Around, state: AgentState) -> dict[str, Any]:
        """The handler's reply as the message to append, or the error entry that explains why there is none."""
        name = agent.name
        if around.entry is None:
            return error_message(activation, name, "entry_missing", "the message that mentioned it is not in the "
                                                                    "thread")
        history = [m for m in around.history[-HISTORY_LIMIT:] if isinstance(m, dict)]
        ctx = HandlerContext(agent=agent, configs=configs, event=activation.event, entry=around.entry,
                             history=history, state=state, reply_id=activation.reply_id(), settings=self.settings)
        timeout = self.settings.handler_timeout_s
        try:
            handler = self.handlers.get(agent.handler)
            async with asyncio.timeout(timeout):
                result = await call_handler(handler, ctx, self.handler_threads)
            reply = Reply(result) if isinstance(result, str) else result
            if not isinstance(reply, Reply) or not isinstance(reply.text, str) or not (
                    reply.data is None or isinstance(reply.data, dict)):
                raise HandlerError("bad_reply", "its handler returned something that is not a reply")
            if len(reply.text) > MAX_ENTRY_TEXT:
                raise HandlerError("reply_too_large", f"its reply is over {MAX_ENTRY_TEXT} characters")
            try:
                # The rules a member's entry follows at the gateway: no NUL, valid Unicode, finite JSON numbers.
                clean_text(reply.text)
                clean_json(reply.data)
            except ValueError as exc:
                raise HandlerError("bad_reply", f"its reply is not a valid entry: {exc}") from None
            message = entry_message(activation, "message", reply.text, reply.data)
            try:
                size = len(dumps(message).encode())
            except (TypeError, ValueError):
                raise HandlerError("bad_reply", "its reply's data is not JSON") from None
            if size > MAX_REPLY_BYTES:
                raise HandlerError("reply_too_large", f"its reply is over {MAX_REPLY_BYTES} bytes")
            return message
        except HandlerError as exc:
            state.discard()
            return error_message(activation, name, exc.code, exc.message)
        except HandlerUnavailable as exc:
            return error_message(activation, name, "handler_unavailable", str(exc))
        except TimeoutError:
            state.discard()
            return error_message(activation, name, "handler_timeout", f"no answer within {timeout:g} s")
        except Exception as exc:
            # The type only: a third party's exception text may hold anything, secrets included.
            log.warning("agent %s: handler %s raised %s", agent.id, agent.handler, type(exc).__name__)
            state.discard()
            return error_message(activation, name, "handler_failed", f"its handler failed ({type(exc).__name__})")

    async def _append(self, store: AgentStore, entry_id: str, activation: ActivationRequest,
                      message: dict[str, Any]) -> None:
        try:
            next_offset = await self.streams.append(activation.event.thread_id, message)
        except StreamMissing:
            await self._finish(store, entry_id, "thread_missing", None)
            return
        except StreamError as exc:
            if exc.status == 0 or exc.status >= 500:
                raise _RetryLater(f"appending the reply failed ({exc.status})") from None
            log.warning("agent %s: the stream refused the reply to %s (%s)", activation.agent.id, entry_id,
                        exc.status)
            await self._finish(store, entry_id, "refused", None)
            return
        await self._finish(store, entry_id, "error" if message.get("kind") == "error" else "replied", next_offset)

    async def _finish(self, store: AgentStore, entry_id: str, outcome: str, next_offset: str | None) -> None:
        store.finish(entry_id, outcome, next_offset)  # a quick commit (store.py): on the loop


class AgentRunner:
    """One agent's queue: runs its unfinished activations, at most `max_concurrency_per_agent` at once."""

    def __init__(self, worker: Worker, agent_id: uuid.UUID, store: AgentStore) -> None:
        self.worker = worker
        self.agent_id = agent_id
        self.store = store
        self.running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = asyncio.create_task(self._loop(), name=f"agent-{agent_id}")

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._task.cancel()
        tasks = [self._task, *self.running.values()]
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()

    async def _loop(self) -> None:
        limit = self.worker.settings.max_concurrency_per_agent
        timer: asyncio.TimerHandle | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                rows, retry_at = self.store.due(set(self.running), limit - len(self.running))
                for row in rows:
                    self.running[row.entry_id] = asyncio.create_task(self._run(row), name=f"activation-{row.entry_id}")
            except Exception as exc:  # an unreadable store must not end the loop: try again later
                log.error("agent %s: inbox unavailable (%s)", self.agent_id, type(exc).__name__)
                retry_at = time.time() + RETRY_MAX_S
            if timer is not None:
                timer.cancel()
            # A postponed activation becomes due then, unless something wakes the loop first.
            timer = None if retry_at is None else asyncio.get_running_loop().call_later(
                max(0.0, retry_at - time.time()), self._wake.set)

    async def _run(self, row: InboxRow) -> None:
        entry_id = row.entry_id
        try:
            # This agent's own slot is already taken (it is in `running`); then one of the worker's, so a slow
            # agent's backlog waits in its own queue instead of holding the worker's slots.
            async with self.worker.slots:
                await self.worker.process(self.store, row)
            self._failures.pop(entry_id, None)
        except _RetryLater as exc:
            await self._later(entry_id, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("agent %s: activation for %s failed unexpectedly", self.agent_id, entry_id, exc_info=exc)
            await self._later(entry_id, type(exc).__name__)
        finally:
            self.running.pop(entry_id, None)
            self.kick()

    async def _later(self, entry_id: str, reason: str) -> None:
        failures = self._failures.get(entry_id, 0) + 1
        self._failures[entry_id] = failures
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1))
        log.warning("agent %s: activation for %s postponed %.1f s: %s", self.agent_id, entry_id, delay, reason)
        with contextlib.suppress(Exception):
            self.store.retry_later(entry_id, time.time() + delay)
