"""Request and response bodies as pydantic models: requests are validated with them, and the
OpenAPI document and the tests' response checks are generated from them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from tocsin.durations import parse_duration
from tocsin.monitor.maintenance import MAX_REASON
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


_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


def parse_moment(value: object) -> datetime:
    """An RFC 3339 date-time with its offset ("2026-12-24T18:00:00Z"); ValueError otherwise."""
    example = "e.g. 2026-12-24T18:00:00Z"
    if not isinstance(value, str) or (match := _RFC3339.fullmatch(value)) is None:
        raise ValueError(f"not an RFC 3339 date-time, {example}")
    offset = match["offset"]
    if offset is None:
        raise ValueError(f"needs a UTC offset, {example}")
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")  # datetime keeps microseconds
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{zone}")
    except ValueError:
        raise ValueError(f"not a valid date-time, {example}") from None


def _duration_text(value: object) -> timedelta:
    if not isinstance(value, str):
        raise ValueError("a duration string such as '90m' or '2h'")
    try:
        return parse_duration(value)
    except OverflowError:  # more days than a timedelta holds
        raise ValueError("too long") from None


Moment = Annotated[
    datetime,
    BeforeValidator(parse_moment),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
DurationText = Annotated[
    timedelta,
    BeforeValidator(_duration_text),
    WithJsonSchema({"type": "string", "examples": ["90m", "2h", "1h30m", "1d"]}),
]


class MaintenanceIn(_Body):
    """Add a maintenance window: exactly one of subject, space or labels; start and end, or
    for (from now), or cron and duration."""

    subject: str | None = Field(
        None, description="The id of a device, integration or space of the org."
    )
    space: str | None = Field(None, description="A space id: the space and its devices.")
    labels: dict[str, str] | None = Field(
        None, description="The org's subjects carrying all these labels."
    )
    start: Moment | None = Field(None, description="RFC 3339 with an offset (give end too).")
    end: Moment | None = Field(None, description="RFC 3339 with an offset, after start.")
    for_: DurationText | None = Field(
        None, alias="for", description='From now, for this long (instead of start and end): "2h".'
    )
    cron: str | None = Field(
        None, description='Five crontab fields, UTC, e.g. "0 2 * * sun" (give duration too).'
    )
    duration: DurationText | None = Field(None, description="How long each occurrence lasts.")
    reason: Annotated[str, Field(max_length=MAX_REASON)] = ""


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


class MaintenanceWindowOut(_Out):
    """A maintenance window: while active, the subjects it covers open no tickets."""

    id: str = Field(description="\"config-N\" (the config file's) or the store's number.")
    source: Literal["config", "api"]
    subject: str | None
    space: str | None
    labels: dict[str, str] | None
    start: str | None
    end: str | None
    cron: str | None
    duration_seconds: float | None
    reason: str
    created_at: str | None
    created_by: str | None
    active: bool
    until: str | None = Field(description="While active: when the current occurrence ends.")
    next_start: str | None = Field(description="While not active: when it next starts (or null).")


class MaintenanceListOut(_Out):
    """The org's maintenance windows, config first, then oldest first."""

    windows: list[MaintenanceWindowOut]
