"""What a ticket is, as the product describes it: states, sources, kinds, subjects, timeline.

Pure values and validation, no I/O: the store, the API and the tracker all speak these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"

    @property
    def display(self) -> str:
        return {"open": "Open", "in_progress": "In Progress", "resolved": "Resolved"}[self.value]


class Source(StrEnum):
    HEALTH_MONITOR = "health_monitor"
    USER = "user"
    WORKFLOW = "workflow"


# Reserved for a future backoffice-declared source; nothing may use it yet.
RESERVED_SOURCES = frozenset({"platform_outage"})


class SubjectType(StrEnum):
    DEVICE = "device"
    INTEGRATION = "integration"
    SPACE = "space"
    OTHER = "other"


class Kind(StrEnum):
    """The built-in kinds; a workflow may also give a free-form kind (see `validate_kind`)."""

    DEVICE_OFFLINE = "device_offline"
    INTEGRATION_CREDENTIALS_INVALID = "integration_credentials_invalid"
    INTEGRATION_UNREACHABLE = "integration_unreachable"
    INTEGRATION_CREDENTIALS_EXPIRING = "integration_credentials_expiring"
    MULTIPLE_DEVICES_OFFLINE = "multiple_devices_offline"
    USER_REPORT = "user_report"
    WEBHOOK_ENDPOINT_FAILING = "webhook_endpoint_failing"

    @property
    def display(self) -> str:
        return self.value.replace("_", " ").capitalize()


class EventType(StrEnum):
    OPENED = "opened"
    STARTED = "started"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    COMMENT = "comment"
    DESCRIPTION_EDITED = "description_edited"


class TriggerType(StrEnum):
    OPENED = "ticket.opened"
    STARTED = "ticket.started"
    COMMENT_ADDED = "ticket.comment_added"
    RESOLVED = "ticket.resolved"
    REOPENED = "ticket.reopened"


class ActorType(StrEnum):
    HEALTH_MONITOR = "health_monitor"
    USER = "user"
    WORKFLOW = "workflow"


MAX_KIND_LENGTH = 64
MAX_TEXT_LENGTH = 20_000
MAX_DEDUP_KEY_LENGTH = 255


@dataclass(frozen=True)
class Actor:
    """Who did something: the health monitor, a person, or a workflow, each by name."""

    type: ActorType
    name: str

    @classmethod
    def health_monitor(cls) -> Actor:
        return cls(ActorType.HEALTH_MONITOR, "health monitor")

    def to_json(self) -> dict[str, str]:
        return {"type": self.type.value, "name": self.name}


@dataclass(frozen=True)
class Subject:
    type: SubjectType
    id: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type.value, "id": self.id, "name": self.name}


@dataclass(frozen=True)
class TimelineEvent:
    id: int
    type: EventType
    at: datetime
    actor: Actor
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "at": rfc3339(self.at),
            "actor": self.actor.to_json(),
            **self.payload,
        }


@dataclass(frozen=True)
class Ticket:
    id: int
    org: str
    seq: int
    state: State
    source: Source
    kind: str
    subject: Subject
    description: str
    dedup_key: str | None
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None

    def to_json(self, base_url: str | None = None) -> dict[str, Any]:
        """The ticket as the contract spells it; `url` needs the server's public base URL."""
        body: dict[str, Any] = {
            "org": self.org,
            "seq": self.seq,
            "state": self.state.value,
            "source": self.source.value,
            "kind": self.kind,
            "subject": self.subject.to_json(),
            "description": self.description,
            "dedup_key": self.dedup_key,
            "opened_at": rfc3339(self.opened_at),
            "updated_at": rfc3339(self.updated_at),
            "resolved_at": rfc3339(self.resolved_at) if self.resolved_at else None,
        }
        if base_url is not None:
            body["url"] = ticket_url(base_url, self.org, self.seq)
        return body


def ticket_url(base_url: str, org: str, seq: int) -> str:
    return f"{base_url.rstrip('/')}/orgs/{org}/tickets/{seq}"


def rfc3339(moment: datetime) -> str:
    """UTC with millisecond precision and a Z, the one spelling of time in the API."""
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def validate_kind(kind: str, source: Source) -> str:
    """Return the kind if `source` may use it; raise ValueError saying why not.

    The health monitor and people use the built-in kinds; a workflow may also give a
    free-form kind of 1-64 printable characters.
    """
    if kind in Kind.__members__.values():
        return kind
    if source is not Source.WORKFLOW:
        allowed = ", ".join(k.value for k in Kind)
        raise ValueError(f"unknown kind {kind!r}: one of {allowed}")
    if not kind or len(kind) > MAX_KIND_LENGTH or not kind.isprintable() or kind.strip() != kind:
        raise ValueError(
            f"a workflow's kind is 1-{MAX_KIND_LENGTH} printable characters with no leading or "
            "trailing space"
        )
    return kind
