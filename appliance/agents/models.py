"""The activation request (appliance/gateway/ACTIVATION.md) as the worker validates it.

Unknown fields are ignored rather than refused: the gateway may add fields to the contract before every worker
is upgraded, and a refusal (422) would make it give the activation up for good.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from appliance.gateway.domain.models import AgentName, Handler
from appliance.gateway.streams import stream_name

# Stream offsets as the streams server writes them ("<digits>_<digits>"), or -1 for "the beginning".
Offset = Annotated[str, StringConstraints(pattern=r"^(-1|[0-9]{1,20}_[0-9]{1,20})$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AgentSpec(_Part):
    """The agent's row as it was when the activation was delivered (fresh config)."""

    id: uuid.UUID
    house_id: uuid.UUID
    name: AgentName
    handler: Handler
    environment_id: uuid.UUID | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    updated_at: str = ""


class MentionEvent(_Part):
    type: Literal["mention"]
    activation_id: int
    attempt: int = Field(ge=1)
    house_id: uuid.UUID
    thread_id: uuid.UUID
    stream: str
    entry_id: uuid.UUID
    offset: Offset
    mentioned_by: uuid.UUID
    agent_name: str = ""


class ActivationRequest(_Part):
    agent: AgentSpec
    configs: dict[str, Any] = Field(default_factory=dict)
    event: MentionEvent

    @model_validator(mode="after")
    def _one_house_one_stream(self) -> ActivationRequest:
        if self.event.house_id != self.agent.house_id:
            raise ValueError("the event's house is not the agent's house")
        if self.event.stream != stream_name(self.event.thread_id):
            raise ValueError("the event's stream is not its thread's stream")
        return self

    def reply_id(self) -> uuid.UUID:
        return reply_id(self.agent.id, self.event.entry_id)


def reply_id(agent_id: uuid.UUID, entry_id: uuid.UUID) -> uuid.UUID:
    """The id of the agent's reply to an entry: the same for every delivery of the same activation, so the reply
    can be found in the stream instead of trusting anything the worker remembers."""
    return uuid.uuid5(agent_id, str(entry_id))
