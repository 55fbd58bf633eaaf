"""An agent that runs outside the appliance and talks to the tenant's gateway as itself.

    APPLIANCE_API_KEY=apk_… python external_agent.py --gateway https://gw.example --thread <thread id> \\
        --name outside [--once | --for-seconds 60]

What it does, with nothing but `httpx`:
1. Exchanges its API key (created once by an admin of its house: `POST /api/api_keys {"agent_id": …}`) for a
   short-lived JWT at `POST /api/auth/token`, and exchanges again before that token expires.
2. Reads the thread through the gateway (`GET /api/threads/{id}/stream?offset=-1`), then tails it
   (`live=long-poll`) - the streams server itself is never reachable from outside.
3. Answers every entry that mentions `@<name>` with `POST /api/threads/{id}/entries`, as the agent. The reply's
   entry id is derived from the agent and the entry it answers (uuid5), and its text from that entry only, so
   running this twice over the same history stores each answer once (the gateway answers a repeat with 200).

The API key comes from $APPLIANCE_API_KEY or a file (--api-key-file), never from the command line: every user of
the machine can read a process's arguments. Give the agent `"handler": "external"` in the appliance, so that the
appliance's own workers leave its mentions to it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

# Exchange again this long before the token expires (clock skew, a long-poll in flight).
REFRESH_MARGIN_S = 60


class GatewaySession:
    """The agent's authenticated session with its tenant's gateway."""

    def __init__(self, gateway: str, api_key: str) -> None:
        self.http = httpx.Client(base_url=gateway, timeout=httpx.Timeout(10.0, read=60.0))
        self._api_key = api_key
        self._token = ""
        self._expires_at = 0.0
        self.agent_id = uuid.UUID(str(self.request("GET", "/api/me").json()["principal_id"]))

    def _authorization(self) -> dict[str, str]:
        if time.monotonic() > self._expires_at - REFRESH_MARGIN_S:
            answer = self.http.post("/api/auth/token", json={"api_key": self._api_key})
            answer.raise_for_status()
            body = answer.json()
            self._token = body["access_token"]
            self._expires_at = time.monotonic() + float(body["expires_in"])
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, headers=self._authorization(), **kwargs)
        if response.status_code == 401:  # revoked or expired early: one fresh exchange, then give up
            self._expires_at = 0.0
            response = self.http.request(method, path, headers=self._authorization(), **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response


def answer(entry: dict[str, Any], name: str) -> str:
    """The reply to an entry: derived from the entry alone, so a repeated run sends exactly the same request."""
    # Without the "@": the answer must not mention anyone (it would wake them).
    return f"{name} (outside the appliance) read: {str(entry.get('text', '')).replace('@', '')}"


def mentions_me(entry: Any, name: str, me: uuid.UUID) -> bool:
    if not isinstance(entry, dict) or entry.get("type") != "entry":
        return False
    if (entry.get("author") or {}).get("id") == str(me):
        return False
    return name.lower() in {str(m).lower() for m in entry.get("mentions") or []}


def reply(session: GatewaySession, thread: str, entry: dict[str, Any], name: str) -> bool:
    """Post the answer to `entry`; True if it is new, False if it was already posted."""
    reply_id = uuid.uuid5(session.agent_id, str(entry["id"]))
    response = session.request("POST", f"/api/threads/{thread}/entries",
                               json={"id": str(reply_id), "text": answer(entry, name), "reply_to": entry["id"]})
    return response.status_code == 201


def run(session: GatewaySession, thread: str, name: str, once: bool, for_seconds: float | None) -> int:
    deadline = None if for_seconds is None else time.monotonic() + for_seconds
    offset, answered = "-1", 0
    live: dict[str, str] = {}
    while deadline is None or time.monotonic() < deadline:
        response = session.request("GET", f"/api/threads/{thread}/stream", params={"offset": offset, **live})
        if response.status_code == 200:
            for entry in response.json():
                if mentions_me(entry, name, session.agent_id) and reply(session, thread, entry, name):
                    answered += 1
                    print(f"answered {entry['id']}", flush=True)
        offset = response.headers.get("stream-next-offset", offset)
        if response.headers.get("stream-up-to-date") == "true" or response.status_code == 204:
            if once:
                break
            live = {"live": "long-poll"}  # caught up: from now on wait for what comes next
    return answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gateway", required=True, help="the tenant gateway's URL")
    parser.add_argument("--thread", required=True, help="the thread to serve")
    parser.add_argument("--name", required=True, help="the agent's name, as mentioned: @<name>")
    parser.add_argument("--api-key-file", type=Path, help="file holding the API key (else $APPLIANCE_API_KEY)")
    parser.add_argument("--once", action="store_true", help="answer what is in the thread now, then exit")
    parser.add_argument("--for-seconds", type=float, help="tail the thread this long, then exit")
    args = parser.parse_args(argv)
    api_key = (args.api_key_file.read_text().strip() if args.api_key_file
               else os.environ.get("APPLIANCE_API_KEY", "").strip())
    if not api_key:
        parser.error("no API key: set $APPLIANCE_API_KEY or pass --api-key-file")
    session = GatewaySession(args.gateway, api_key)
    answered = run(session, str(uuid.UUID(args.thread)), args.name, args.once, args.for_seconds)
    print(f"agent {session.agent_id}: {answered} new answer(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
