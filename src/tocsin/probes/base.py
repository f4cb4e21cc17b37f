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


class PullProbe(Protocol):
    """A probe the scheduler calls on an interval. `check` never raises except CancelledError:
    every library error becomes an unhealthy Observation with a readable detail, and it returns
    within its own timeout."""

    async def check(self) -> Observation: ...


# Push-style sources (MQTT, push heartbeats) report through a sink as things happen.
Sink = Callable[[SubjectKey, Observation], None]


@dataclass
class ProbeContext:
    """Shared resources; built once by the daemon (tests build their own)."""

    base_dir: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)
    resources: dict[str, Any] = field(default_factory=dict)  # e.g. "http": ClientSession
