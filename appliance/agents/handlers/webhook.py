"""`webhook`: asks an operator-configured HTTP endpoint (an on-prem model server, say) for the reply.

Where it may post is the operator's decision, not a house admin's: endpoints are named in the tenant's
`<agents dir>/webhooks.json` (0600, the tenant's user), and an agent only picks one by name in its config
(`{"webhook": "<name>"}`, default `default`). A URL in the agent's config would let anyone who can edit an agent
make the worker post thread history to any address it can reach - the streams server on loopback included.

    {"default": {"url": "http://10.0.0.5:8080/reply", "headers": {"Authorization": "Bearer …"}}}

The worker POSTs JSON `{"agent", "configs", "event", "entry", "history", "reply_id"}` with an `Idempotency-Key`
header (the reply id, the same on every retry) and expects a 2xx JSON answer `{"text": "…", "data": {…}}`
(`data` optional). Each attempt is bounded by `agents.webhook_timeout_s` (the whole answer, not only between
bytes); timeouts, connection failures, 429 and 5xx are retried `agents.webhook_retries` times; an answer over
`agents.webhook_max_response_bytes`, another status, or anything but that JSON fails at once. Every failure
becomes the agent's visible error entry; redirects are not followed. The file is read at each call, so an
operator's edit takes effect without a restart. Error messages name the endpoint, never its URL or headers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from appliance.agents.handlers import HISTORY_LIMIT, HandlerContext, HandlerError, Reply
from appliance.config import AgentsSettings
from appliance.gateway.domain.models import MAX_ENTRY_TEXT

WEBHOOKS_FILE: Final = "webhooks.json"
DEFAULT_HISTORY: Final = 20
MAX_HISTORY: Final = HISTORY_LIMIT


@dataclass(frozen=True)
class Endpoint:
    url: str
    headers: dict[str, str]


def load_endpoints(agents_dir: Path) -> dict[str, Endpoint]:
    path = agents_dir / WEBHOOKS_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise HandlerError("webhook_misconfigured", "the operator's webhook configuration is unreadable") from None
    if not isinstance(raw, dict):
        raise HandlerError("webhook_misconfigured", "the operator's webhook configuration is not an object")
    endpoints: dict[str, Endpoint] = {}
    for name, item in raw.items():
        url = item.get("url") if isinstance(item, dict) else None
        headers = item.get("headers", {}) if isinstance(item, dict) else None
        if (not isinstance(url, str) or not url.startswith(("http://", "https://")) or not isinstance(headers, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise HandlerError("webhook_misconfigured", f"the operator's webhook endpoint {name!r} is malformed")
        endpoints[str(name)] = Endpoint(url, dict(headers))
    return endpoints


class _TooLarge(Exception):
    pass


class WebhookHandler:
    def __init__(self, agents_dir: Path, settings: AgentsSettings) -> None:
        self.agents_dir = agents_dir
        self.settings = settings
        # Never through an environment proxy, never following a redirect to somewhere the operator did not name.
        self.http = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                      timeout=httpx.Timeout(settings.webhook_timeout_s))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __call__(self, ctx: HandlerContext) -> Reply:
        name = ctx.agent.config.get("webhook", "default")
        if not isinstance(name, str):
            raise HandlerError("webhook_misconfigured", "the agent's `webhook` setting must name an endpoint")
        endpoint = load_endpoints(self.agents_dir).get(name)
        if endpoint is None:
            raise HandlerError("webhook_not_configured", f"no webhook endpoint named {name!r} is configured")
        body = json.dumps(self._request(ctx), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {**endpoint.headers, "content-type": "application/json", "idempotency-key": str(ctx.reply_id)}
        attempts = self.settings.webhook_retries + 1
        failure = ("webhook_failed", "the webhook failed")
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
            try:
                async with asyncio.timeout(self.settings.webhook_timeout_s):
                    status, content = await self._post(endpoint.url, body, headers)
            except TimeoutError:
                failure = ("webhook_timeout", f"the webhook {name!r} did not answer within "
                                              f"{self.settings.webhook_timeout_s:g} s")
                continue
            except _TooLarge:
                raise HandlerError("webhook_reply_too_large", f"the webhook {name!r} answered more than "
                                   f"{self.settings.webhook_max_response_bytes} bytes") from None
            except httpx.HTTPError as exc:
                failure = ("webhook_unreachable", f"the webhook {name!r} is unreachable ({type(exc).__name__})")
                continue
            if status >= 500 or status == 429:
                failure = ("webhook_failed", f"the webhook {name!r} answered {status}")
                continue
            if not 200 <= status < 300:
                raise HandlerError("webhook_refused", f"the webhook {name!r} answered {status}")
            return _parse(name, content)
        code, message = failure
        raise HandlerError(code, f"{message} ({attempts} attempt{'s' if attempts > 1 else ''})")

    def _request(self, ctx: HandlerContext) -> dict[str, Any]:
        wanted = ctx.agent.config.get("history", DEFAULT_HISTORY)
        count = wanted if isinstance(wanted, int) and 0 <= wanted <= MAX_HISTORY else DEFAULT_HISTORY
        return {
            "agent": {"id": str(ctx.agent.id), "name": ctx.agent.name, "house_id": str(ctx.agent.house_id),
                      "config": ctx.agent.config},
            "configs": ctx.configs,
            "event": ctx.event.model_dump(mode="json"),
            "entry": ctx.entry,
            "history": ctx.history[-count:] if count else [],
            "reply_id": str(ctx.reply_id),
        }

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        cap = self.settings.webhook_max_response_bytes
        async with self.http.stream("POST", url, content=body, headers=headers) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():  # decoded: the cap holds for compressed answers too
                size += len(chunk)
                if size > cap:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)


def _parse(name: str, content: bytes) -> Reply:
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    text = answer.get("text") if isinstance(answer, dict) else None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(text, str) or not (data is None or isinstance(data, dict)):
        raise HandlerError("webhook_bad_reply", f"the webhook {name!r} did not answer with "
                                                '{"text": "...", "data": {...}}')
    if len(text) > MAX_ENTRY_TEXT:
        raise HandlerError("webhook_reply_too_large", f"the webhook {name!r} answered more than "
                                                      f"{MAX_ENTRY_TEXT} characters of text")
    return Reply(text, data)
