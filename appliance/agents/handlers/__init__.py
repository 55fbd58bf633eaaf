"""Agent handlers: what an agent does when it is mentioned.

A handler is a callable taking a `HandlerContext` and returning a `Reply` or a `str` (or an awaitable of one):

    from appliance.agents.handlers import HandlerContext, Reply

    async def shout(ctx: HandlerContext) -> Reply:
        count = ctx.state.get("count", 0) + 1
        ctx.state.set("count", count)          # committed together with the reply
        return Reply(ctx.entry["text"].upper(), data={"count": count})

Built in: `echo`, `webhook`, and `external` (the agent runs outside the appliance and answers through the
gateway itself, see ../README.md: the worker records its activations and posts nothing). Third-party handlers
are found through the Python entry-point group `appliance.agents` (in the distribution's pyproject.toml:
`[project.entry-points."appliance.agents"] shout = "my_package.handlers:shout"`); an agent uses one by naming it
in its `handler` field. Built-in names cannot be taken over by a third party.

A handler that raises `HandlerError(code, message)` gets `message` posted as its visible error entry; any other
exception, a timeout (`agents.handler_timeout_s`) or an unknown handler name posts a generic error entry.
Coroutine handlers run on the worker's event loop (they must not block it); plain functions run in a thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final

from appliance.agents.models import AgentSpec, MentionEvent
from appliance.agents.store import AgentState
from appliance.config import AgentsSettings

log = logging.getLogger("appliance.agents")

ENTRY_POINT_GROUP: Final = "appliance.agents"
EXTERNAL: Final = "external"
HISTORY_LIMIT: Final = 100  # messages of the thread a handler is given (the triggering entry and those before it)
BUILTIN_NAMES: Final = ("echo", "webhook", EXTERNAL)


@dataclass(frozen=True)
class Reply:
    text: str
    data: dict[str, Any] | None = None


class HandlerError(Exception):
    """A failure the handler explains: `message` is shown in the thread, so it must not hold secrets."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class HandlerContext:
    agent: AgentSpec  # the agent as last activated (its freshest config)
    configs: dict[str, Any]  # the house's configs (house-wide, overridden by the agent's environment)
    event: MentionEvent
    entry: dict[str, Any]  # the triggering entry, as it is in the thread's stream
    history: list[dict[str, Any]]  # the thread's messages up to and including `entry`, oldest first
    state: AgentState  # the agent's own key-value state
    reply_id: uuid.UUID  # the id the reply will have (stable across retries: use it as an idempotency key)
    settings: AgentsSettings
    extra: dict[str, Any] = field(default_factory=dict)


HandlerResult = Reply | str
Handler = Callable[[HandlerContext], HandlerResult | Awaitable[HandlerResult]]


async def call_handler(handler: Handler, ctx: HandlerContext, threads: Executor | None = None) -> HandlerResult:
    """Run `handler` without blocking the event loop: plain functions go to `threads`, a pool of their own, so
    handlers stuck in blocking calls never take the threads the worker's own storage work runs on."""
    call = getattr(handler, "__call__", handler)  # noqa: B004 - instances with an async __call__ count too
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        result: Any = await handler(ctx)  # type: ignore[misc]
    else:
        result = await asyncio.get_running_loop().run_in_executor(threads, handler, ctx)
        if inspect.isawaitable(result):
            result = await result
    return result  # type: ignore[no-any-return]


class HandlerUnavailable(Exception):
    pass


class HandlerRegistry:
    """Built-in handlers plus those of the `appliance.agents` entry-point group, loaded on first use."""

    def __init__(self, builtins: dict[str, Handler]) -> None:
        self.builtins = dict(builtins)
        self._loaded: dict[str, Handler] = {}

    def get(self, name: str) -> Handler:
        if name in self.builtins:
            return self.builtins[name]
        if name in BUILTIN_NAMES:
            raise HandlerUnavailable(f"the built-in handler {name!r} is not run by handlers")
        if name in self._loaded:
            return self._loaded[name]
        # Looked up again on every miss, so a package installed while the worker runs is found without a restart.
        found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
        if not found:
            raise HandlerUnavailable(f"no handler named {name!r} is installed")
        try:
            handler = found[0].load()
        except Exception as exc:
            log.warning("handler %s failed to load: %s", name, type(exc).__name__)
            raise HandlerUnavailable(f"the handler {name!r} failed to load") from None
        if not callable(handler):
            raise HandlerUnavailable(f"the handler {name!r} is not callable")
        self._loaded[name] = handler
        return handler

    def names(self) -> list[str]:
        third_party = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return sorted(set(self.builtins) | set(BUILTIN_NAMES) | third_party)

    async def close(self) -> None:
        for handler in self.builtins.values():
            close = getattr(handler, "aclose", None)
            if close is not None:
                await close()


def default_registry(agents_dir: Path, settings: AgentsSettings) -> HandlerRegistry:
    from appliance.agents.handlers.echo import echo
    from appliance.agents.handlers.webhook import WebhookHandler

    return HandlerRegistry({"echo": echo, "webhook": WebhookHandler(agents_dir, settings)})
