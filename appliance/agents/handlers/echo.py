"""`echo`: replies with what it was asked (the triggering entry's text), for smoke tests and benchmarks."""

from __future__ import annotations

from appliance.agents.handlers import HandlerContext, Reply


async def echo(ctx: HandlerContext) -> Reply:
    text = ctx.entry.get("text")
    return Reply(text if isinstance(text, str) else "", data={"echo_of": str(ctx.event.entry_id)})
