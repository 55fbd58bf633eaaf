"""Bearer tokens from the tenant's issuers (a provider-issued access token, e.g. a command-line client's from the
device flow), accepted next to the tenant's own JWTs: verified against the issuer's keys for the issuer's
audience and mapped to the person's principal (made at their first use).

Two memories keep this off the database on the request path, each for at most REMEMBER_S: a verified token (by
its text, as the tenant's own keyring remembers its tokens) until it expires, and a person (issuer, subject) ->
principal, so a new token of a known person costs its signature check only. Within that time a disabled person
may still be let in; after it they are refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final, TypeVar

from appliance.gateway.core.db import Database
from appliance.gateway.identity.issuers import Issuer
from appliance.gateway.identity.principals import person_for

REMEMBER_S: Final = 60.0
MAX_REMEMBERED: Final = 10_000
K = TypeVar("K")


class IssuerBearers:
    def __init__(self, db: Database, roles_changed: Callable[[uuid.UUID], None]) -> None:
        self.db = db
        self._roles_changed = roles_changed
        self._tokens: dict[str, tuple[uuid.UUID, float]] = {}
        self._people: dict[tuple[str, str], tuple[uuid.UUID, float]] = {}

    def remembered(self, token: str) -> uuid.UUID | None:
        """The principal of a token verified less than REMEMBER_S ago and not expired (the request path's check,
        made before anything else so a client reusing its token costs a lookup)."""
        known = self._tokens.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        return None

    async def principal(self, issuer: Issuer, token: str, client: str) -> uuid.UUID:
        """The principal of a token `issuer` signed; TokenError or principals.Disabled otherwise."""
        now = time.time()
        verified = await issuer.verify(token, issuer.config.access_audience)
        person_key = (issuer.config.issuer, verified.subject)
        person = self._people.get(person_key)
        if person is None or now >= person[1]:
            async with self.db.connection() as conn:
                found = await person_for(conn, verified, client, interactive=False)
            if found.roles_changed:
                self._roles_changed(found.principal_id)
            person = (found.principal_id, now + REMEMBER_S)
            _remember(self._people, person_key, person, now)
        _remember(self._tokens, token, (person[0], min(verified.expires_at, now + REMEMBER_S)), now)
        return person[0]

    def forget_principal(self, principal_id: uuid.UUID) -> None:
        self._tokens = {k: v for k, v in self._tokens.items() if v[0] != principal_id}
        self._people = {k: v for k, v in self._people.items() if v[0] != principal_id}


def _remember(memory: dict[K, tuple[uuid.UUID, float]], key: K, value: tuple[uuid.UUID, float],
                 now: float) -> None:
    if len(memory) >= MAX_REMEMBERED:
        for stale in [k for k, v in memory.items() if v[1] <= now]:
            del memory[stale]
        if len(memory) >= MAX_REMEMBERED:
            memory.clear()
    memory[key] = value
