"""What a probe saw, in the tracker's terms: healthy, unhealthy, or unknown."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


class Sharing:
    """One object for equal details across observations.

    Results from the probe worker arrive as new objects, and a subject keeps its last few: at
    100,000 subjects the same "HTTP 200 in 3 ms" was held a hundred thousand times over.
    Bounded: at `limit` distinct details it forgets them all. (Data is shared with the
    subject's own last result, by the monitor: an HTTP device's names its URL, an SNMP one's
    its uptime, so a table of all of them only filled up and forgot.)
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._details: dict[str, str] = {}

    def __call__(self, observation: Observation) -> Observation:
        if len(self._details) >= self._limit:
            self._details.clear()
        detail = self._details.setdefault(observation.detail, observation.detail)
        if detail is observation.detail:
            return observation
        return replace(observation, detail=detail)


def like(observation: Observation, last: Observation | None) -> Observation:
    """`observation`, holding `last`'s detail and data where they are equal: a subject's
    results mostly repeat, and it keeps its last few (8.7 MiB of copies at 100,000)."""
    if last is None or observation is last:
        return observation
    detail = last.detail if observation.detail == last.detail else observation.detail
    data = last.data if observation.data == last.data else observation.data
    if detail is observation.detail and data is observation.data:
        return observation
    return replace(observation, detail=detail, data=data)
