"""Where the pull probes (http, snmp, credential checks) run.

`InlinePulls` runs them on the daemon's own event loop, the way tocsin always has. At 100,000
subjects that loop is full (pysnmp alone took a third of it), so `tocsin.monitor.worker` can run
the same scheduler and probes in a child process on another core instead. Both take the same
calls from `MonitorService`: `add` (schedule or replace), `remove`, `retry` (a failing subject is
looked at sooner), and deliver results to the same sink, the monitor's `observe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from yarl import URL

from tocsin.metrics import Metrics, Timed
from tocsin.monitor.scheduler import PullScheduler, ResultSink
from tocsin.probes.base import ProbeContext, PullProbe
from tocsin.probes.credentials import CredentialCheck, CredentialCheckSpec
from tocsin.probes.http import HTTP_RESOURCE, HttpProbe, HttpSpec, make_http_session
from tocsin.probes.observation import SubjectKey
from tocsin.probes.snmp import SnmpProbe, SnmpSpec, close_snmp_engine

PullSpec = HttpSpec | SnmpSpec | CredentialCheckSpec


class PullRunner(Protocol):
    handed_over: asyncio.Event
    """Set once the first schedule is where the probes run (or they could not start)."""

    def __len__(self) -> int: ...

    def add(self, key: SubjectKey, spec: PullSpec, interval: float) -> None: ...

    def remove(self, key: SubjectKey) -> None: ...

    def retry(self, key: SubjectKey, every: float | None) -> None: ...

    def go(self) -> None:
        """The first schedule is in (after the monitor restored its state): start checking."""

    async def run(self, started: asyncio.Event) -> None:
        """Run until cancelled (it may start before `go`, to get ready); set `started` once
        the probes are scheduled and checking."""
        ...


def probe_type(spec: PullSpec) -> str:
    if isinstance(spec, HttpSpec):
        return "http"
    if isinstance(spec, SnmpSpec):
        return "snmp"
    return "credentials"


def schedule(
    scheduler: PullScheduler,
    key: SubjectKey,
    spec: PullSpec,
    interval: float,
    context: ProbeContext,
    timed: Callable[[PullProbe, str], PullProbe] = lambda probe, _: probe,
) -> None:
    """Build the probe `spec` describes and schedule it (replacing the subject's last one)."""
    kind = probe_type(spec)
    if isinstance(spec, HttpSpec):
        scheduler.add(
            key,
            timed(HttpProbe(spec, context), kind),
            timeout=spec.timeout.total_seconds(),
            interval=interval,
            host=host_of(spec.url),
        )
    elif isinstance(spec, SnmpSpec):
        scheduler.add(
            key,
            timed(SnmpProbe(spec, context), kind),
            timeout=spec.deadline,
            interval=interval,
            host=spec.host,
        )
    else:
        scheduler.add(
            key,
            timed(CredentialCheck(spec, context), kind),
            timeout=spec.timeout.total_seconds(),
            interval=None if spec.cron else interval,
            cron=spec.cron,
            host=host_of(spec.url),
        )


def host_of(url: str) -> str | None:
    try:
        return URL(url).host
    except ValueError:
        return None


async def run_scheduler(
    scheduler: PullScheduler, context: ProbeContext, *, max_concurrency: int, per_host: int
) -> None:
    """Run `scheduler` with the shared resources its probes use (one HTTP session, one SNMP
    engine), closed when it stops."""
    context.resources[HTTP_RESOURCE] = make_http_session(
        limit=max_concurrency, limit_per_host=per_host
    )
    try:
        await scheduler.run()
    finally:
        session = context.resources.pop(HTTP_RESOURCE, None)
        if session is not None:
            await session.close()
        await close_snmp_engine(context)


class InlinePulls:
    """Pull probes on the daemon's own event loop."""

    def __init__(
        self,
        sink: ResultSink,
        context: ProbeContext,
        *,
        max_concurrency: int,
        per_host: int,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        lag: Callable[[float], float] = lambda since: 0.0,
    ) -> None:
        self.context = context
        self.metrics = metrics
        self._limits = (max_concurrency, per_host)
        self._go = asyncio.Event()
        self.handed_over = self._go  # the schedule is in place once `go` is said
        self.scheduler = PullScheduler(
            sink,
            max_concurrency=max_concurrency,
            per_host=per_host,
            monotonic=monotonic,
            wall=wall,
            lag=lag,
        )

    def __len__(self) -> int:
        return len(self.scheduler)

    def add(self, key: SubjectKey, spec: PullSpec, interval: float) -> None:
        schedule(self.scheduler, key, spec, interval, self.context, self._timed)

    def remove(self, key: SubjectKey) -> None:
        self.scheduler.remove(key)

    def retry(self, key: SubjectKey, every: float | None) -> None:
        self.scheduler.retry(key, every)

    def go(self) -> None:
        self._go.set()

    async def run(self, started: asyncio.Event) -> None:
        await self._go.wait()
        started.set()
        limit, per_host = self._limits
        await run_scheduler(self.scheduler, self.context, max_concurrency=limit, per_host=per_host)

    def _timed(self, probe: PullProbe, kind: str) -> PullProbe:
        return probe if self.metrics is None else Timed(probe, kind, self.metrics)
