"""What a probe saw, in the tracker's terms: healthy, unhealthy, or unknown."""

from __future__ import annotations

import json
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
    """One object for equal details and data across observations.

    Results from the probe worker arrive as new objects, and a subject keeps its last few: at
    100,000 subjects the same "HTTP 200 in 3 ms" and {"status": 200} were held a hundred
    thousand times over. Bounded: at `limit` distinct values it forgets them all.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._details: dict[str, str] = {}
        self._data: dict[str, dict[str, Any]] = {}

    def __call__(self, observation: Observation) -> Observation:
        if len(self._details) + len(self._data) > self._limit:
            self._details.clear()
            self._data.clear()
        detail = self._details.setdefault(observation.detail, observation.detail)
        data = observation.data
        if data:
            try:
                key = json.dumps(data, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError):
                key = None  # not JSON: kept as it is
            if key is not None:
                data = self._data.setdefault(key, data)
        if detail is observation.detail and data is observation.data:
            return observation
        return replace(observation, detail=detail, data=data)
