"""What every probe shares: the pull-probe protocol, the push sink, and the context of
shared resources (one HTTP session, one SNMP engine, secrets' folder, clocks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tocsin.probes.observation import Observation, SubjectKey


class SpecModel(BaseModel):
    """Base of every probe spec in the config: unknown keys are errors, values strictly typed."""

    # use_attribute_docstrings: the docstring under each field is its description, which the
    # config reference in README.md is generated from (tocsin.docs).
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)


# The distinct sets of given fields, each kept once: see share_fields_set.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def share_fields_set(model: BaseModel) -> None:
    """Give a frozen model the one shared copy of its set of given fields (model_fields_set).

    pydantic keeps that set per instance, some 200 bytes, a quarter of what a subject's models
    hold, while a config of 100,000 subjects has a handful of distinct ones. Sharing it is safe
    for frozen models: pydantic changes the set only on assignment, which they refuse, and
    model_copy copies it first.
    """
    if not model.model_config.get("frozen"):
        return
    given = model.__pydantic_fields_set__
    shared = _FIELDS_SETS.setdefault(frozenset(given), given)
    if shared is not given:
        object.__setattr__(model, "__pydantic_fields_set__", shared)


class PullProbe(Protocol):
    """A probe the scheduler calls on an interval. `check` never raises except CancelledError:
    every library error becomes an unhealthy Observation with a readable detail, and it returns
    within its own timeout."""

    async def check(self) -> Observation: ...


class Sink(Protocol):
    """Push-style sources (MQTT, push heartbeats) report through a sink as things happen.
    `at` is when the observation was made (monotonic), if earlier than its handling."""

    def __call__(
        self, key: SubjectKey, observation: Observation, at: float | None = None, /
    ) -> None: ...


@dataclass
class ProbeContext:
    """Shared resources; built once by the daemon (tests build their own)."""

    base_dir: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)
    resources: dict[str, Any] = field(default_factory=dict)  # e.g. "http": ClientSession
