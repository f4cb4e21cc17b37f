"""Request and response bodies as pydantic models: requests are validated with them, and the
OpenAPI document and the tests' response checks are generated from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tocsin.tickets.model import (
    MAX_DEDUP_KEY_LENGTH,
    MAX_KIND_LENGTH,
    MAX_TEXT_LENGTH,
    RESERVED_SOURCES,
    EventType,
    Source,
    State,
    SubjectType,
)

Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
NonEmptyText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH)]
ActorName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="Who is acting, as the timeline shows it; default: the token's name.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SubjectIn(_Body):
    type: SubjectType
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s/][^/]*$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]


class OpenTicketIn(_Body):
    """Open a ticket: a workflow's Open Ticket action, or a person's Report issue."""

    source: Annotated[Source, Field(description="workflow or user")]
    subject: SubjectIn
    kind: Annotated[str | None, Field(default=None, max_length=MAX_KIND_LENGTH)] = None
    description: Text = ""
    dedup_key: Annotated[str | None, Field(min_length=1, max_length=MAX_DEDUP_KEY_LENGTH)] = None
    actor_name: ActorName | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _not_reserved(cls, value: Any) -> Any:
        if value in RESERVED_SOURCES:
            raise ValueError(f"{value!r} is reserved for a future source")
        if value == Source.HEALTH_MONITOR.value:
            raise ValueError("only the health monitor opens health_monitor tickets")
        return value


class TransitionIn(_Body):
    comment: NonEmptyText | None = None
    actor_name: ActorName | None = None


class CommentIn(_Body):
    body: NonEmptyText
    actor_name: ActorName | None = None


class EditIn(_Body):
    description: Text
    actor_name: ActorName | None = None


# -- responses ---------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectOut(_Out):
    type: SubjectType
    id: str
    name: str


class ActorOut(_Out):
    type: Literal["health_monitor", "user", "workflow"]
    name: str


class TimelineEventOut(_Out):
    id: int
    type: EventType
    at: str
    actor: ActorOut
    body: str | None = Field(None, description="comment: the markdown body")
    comment: str | None = Field(None, description="started/resolved/reopened: optional comment")
    old_description: str | None = Field(None, description="description_edited")
    new_description: str | None = Field(None, description="description_edited")


class TicketOut(_Out):
    org: str
    seq: int
    state: State
    source: Source
    kind: str
    subject: SubjectOut
    description: str
    dedup_key: str | None
    opened_at: str
    updated_at: str
    resolved_at: str | None
    url: str


class TicketDetailOut(TicketOut):
    timeline: list[TimelineEventOut]


class TicketListOut(_Out):
    tickets: list[TicketOut]
    next_cursor: str | None


class ErrorDetail(_Out):
    code: str
    message: str
    field: str | None


class ErrorOut(_Out):
    error: ErrorDetail


class HealthOut(_Out):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
