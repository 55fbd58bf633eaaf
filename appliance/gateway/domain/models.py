"""Request bodies (pydantic, unknown fields refused) and the field types they share.

Text fields refuse U+0000 and lone surrogates (Postgres cannot store them, and they have no canonical JSON for
the audit hash); JSON values are checked the same way, recursively, with a depth limit and finite numbers only.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_JSON_DEPTH = 32


# The most characters an entry's text may hold, whoever writes it (members through the gateway, agents' replies).
MAX_ENTRY_TEXT: Final = 100_000


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        clean_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            clean_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def clean_json(value: Any) -> Any:
    _check_json(value)
    return value


def Text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(clean_text)]


# Names that appear in mentions, keys and lookups: a strict pattern, identical to the CHECKs in the migrations.
AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
EnvironmentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Handler = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
JsonValue = Annotated[Any, AfterValidator(clean_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(clean_json)]
Role = Literal["owner", "admin", "member"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HouseCreate(Body):
    id: uuid.UUID | None = None
    name: Text(200, 1)  # type: ignore[valid-type]


class HouseUpdate(Body):
    name: Text(200, 1) | None = None  # type: ignore[valid-type]


class MemberCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    principal_id: uuid.UUID
    role: Role = "member"


class MemberUpdate(Body):
    role: Role


class EnvironmentCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    name: EnvironmentName
    description: Text(2000) = ""  # type: ignore[valid-type]


class EnvironmentUpdate(Body):
    name: EnvironmentName | None = None
    description: Text(2000) | None = None  # type: ignore[valid-type]


class AgentCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    name: AgentName
    handler: Handler
    environment_id: uuid.UUID | None = None
    config: JsonObject = Field(default_factory=dict)


class AgentUpdate(Body):
    name: AgentName | None = None
    handler: Handler | None = None
    environment_id: uuid.UUID | None = None
    config: JsonObject | None = None


class ThreadCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    title: Text(500) = ""  # type: ignore[valid-type]


class ThreadUpdate(Body):
    title: Text(500) | None = None  # type: ignore[valid-type]


class ConfigCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    key: Key
    value: JsonValue


class ConfigUpdate(Body):
    value: JsonValue


class SecretCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    name: Key
    value: Text(65536)  # type: ignore[valid-type]


class SecretUpdate(Body):
    value: Text(65536)  # type: ignore[valid-type]


class InviteCreate(Body):
    id: uuid.UUID | None = None
    house_id: uuid.UUID
    role: Literal["admin", "member"] = "member"
    ttl_s: int = Field(default=7 * 86400, ge=60, le=30 * 86400)


class InviteAccept(Body):
    code: Annotated[str, StringConstraints(max_length=200)]


class ApiKeyCreate(Body):
    id: uuid.UUID | None = None
    name: Text(200) = ""  # type: ignore[valid-type]
    # An agent's key (the caller must be an admin of the agent's house); without it, a key for the caller.
    agent_id: uuid.UUID | None = None
    ttl_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)


class TokenRequest(Body):
    api_key: Annotated[str, StringConstraints(max_length=200)]


class EntryCreate(Body):
    id: uuid.UUID
    kind: Literal["message", "system"] = "message"
    text: Text(MAX_ENTRY_TEXT)  # type: ignore[valid-type]
    data: JsonObject | None = None
    reply_to: uuid.UUID | None = None


# -- responses (documented in the OpenAPI; routes return plain JSON of these shapes) --------------------------


class WriteResult(BaseModel):
    data: dict[str, Any]
    txid: int = Field(description="Postgres transaction id of the write; await it in the shape stream")


class EntryResult(BaseModel):
    data: dict[str, Any]
    duplicate: bool = Field(description="true when this entry id was already stored (a retry)")


class TokenResult(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class Me(BaseModel):
    principal_id: uuid.UUID
    principal_kind: Literal["user", "agent"]
    houses: list[dict[str, Any]]


def to_json(value: Any) -> Any:
    """A column value as JSON has it: UUIDs and timestamps as their text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
