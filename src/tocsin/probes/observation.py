"""What a probe saw, in the tracker's terms: healthy, unhealthy, or unknown."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"  # the probe could not tell (e.g. the device's MQTT broker is down)


class SubjectKey(NamedTuple):
    """A subject is unique per org and type.

    A tuple, not a dataclass: it keys every dictionary of 100,000 subjects, and a tuple is
    made, hashed, compared and pickled in C (a dataclass's hash is a Python call)."""

    org: str
    type: str  # device | integration | space | other
    id: str

    def __str__(self) -> str:
        return f"{self.org}/{self.type}/{self.id}"


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe result.

    `detail` is a one-line human-readable summary ("HTTP 503 in 120 ms", "timeout after 5 s",
    "offline (Last Will)"); `kind_hint` the ticket kind this failure calls for
    (device_offline, integration_credentials_invalid, integration_unreachable, ...);
    `error_class` a short stable word for the failure's nature (timeout, refused, http_5xx,
    auth, ...), which the tracker compares to tell whether the failure changed nature.
    `data` holds probe-specific facts for the ticket description (status, latency_ms, ...).
    """

    health: Health
    detail: str
    kind_hint: str | None = None
    error_class: str | None = None
    latency_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY
