"""Prometheus metrics at /metrics: what the daemon does (probes, event-loop lag) as counters
and histograms, and what it holds (subjects by health, tickets, outbox, deliveries) read at
scrape time, so the numbers are never stale and cost nothing between scrapes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tocsin.db import schema
from tocsin.db.health import Fault
from tocsin.probes.base import PullProbe
from tocsin.probes.observation import Health, Observation

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.probe_runs = Counter(
            "tocsin_probe_runs_total", "Probe results, by probe type.", ["type"], registry=r
        )
        self.probe_failures = Counter(
            "tocsin_probe_failures_total",
            "Unhealthy probe results, by probe type.",
            ["type"],
            registry=r,
        )
        self.probe_latency = Histogram(
            "tocsin_probe_duration_seconds",
            "How long a pull probe's check took, by probe type.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "tocsin_event_loop_lag_seconds",
            "How late the event loop ran a timer that should fire now.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.subjects = Gauge(
            "tocsin_subjects", "Monitored subjects, by health.", ["health"], registry=r
        )
        self.flapping = Gauge("tocsin_subjects_flapping", "Subjects marked flapping.", registry=r)
        self.tickets = Gauge(
            "tocsin_tickets", "Tickets, by state and kind.", ["state", "kind"], registry=r
        )
        self.outbox_backlog = Gauge(
            "tocsin_outbox_backlog",
            "Triggers not yet fanned out to webhook deliveries.",
            registry=r,
        )
        self.deliveries = Gauge(
            "tocsin_webhook_deliveries",
            "Webhook deliveries, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )

        self.store_failures = Counter(
            "tocsin_store_failures",
            "Writes the store refused, by fault (disk_full, locked, missing, read_only, ...).",
            ["fault"],
            registry=r,
        )
        self._store_failures_seen: dict[str, int] = {}
        for fault in Fault:  # every series from the start, at 0: rate() needs a first sample
            self.store_failures.labels(fault.value)

    def observed(
        self, probe_type: str, observation: Observation, seconds: float | None = None
    ) -> None:
        self.probe_runs.labels(probe_type).inc()
        if observation.health is Health.UNHEALTHY:
            self.probe_failures.labels(probe_type).inc()
        if seconds is not None:
            self.probe_latency.labels(probe_type).observe(seconds)

    async def render(
        self,
        engine: AsyncEngine,
        health: Callable[[], Iterable[tuple[str, bool]]],
        store_failures: Mapping[str, int] | None = None,
    ) -> bytes:
        """Refresh what is read at scrape time, then the text exposition format. The store's
        figures are left as they were when it cannot be read (its fault is counted)."""
        for fault, count in (store_failures or {}).items():
            seen = self._store_failures_seen.get(fault, 0)
            if count > seen:
                self.store_failures.labels(fault).inc(count - seen)
                self._store_failures_seen[fault] = count
        self.subjects.clear()
        flapping = 0
        counts: dict[str, int] = {}
        for state, is_flapping in health():
            counts[state] = counts.get(state, 0) + 1
            flapping += is_flapping
        for state in ("unknown", "up", "failing", "down", "recovering", "unreachable"):
            self.subjects.labels(state).set(counts.get(state, 0))
        self.flapping.set(flapping)
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self._read_store(engine)
        return generate_latest(self.registry)

    async def _read_store(self, engine: AsyncEngine) -> None:
        t, d, trig, cur = (
            schema.tickets,
            schema.deliveries,
            schema.triggers,
            schema.outbox_cursors,
        )
        async with engine.connect() as conn:
            tickets = (
                await conn.execute(
                    select(t.c.state, t.c.kind, func.count()).group_by(t.c.state, t.c.kind)
                )
            ).all()
            deliveries = (
                await conn.execute(
                    select(d.c.endpoint, d.c.status, func.count()).group_by(
                        d.c.endpoint, d.c.status
                    )
                )
            ).all()
            newest = (await conn.execute(select(func.max(trig.c.id)))).scalar() or 0
            fanned = (
                await conn.execute(select(cur.c.position).where(cur.c.name == "webhooks"))
            ).scalar() or 0
        self.tickets.clear()
        for state, kind, count in tickets:
            self.tickets.labels(state, kind).set(count)
        self.deliveries.clear()
        for endpoint, status, count in deliveries:
            self.deliveries.labels(endpoint, status).set(count)
        self.outbox_backlog.set(max(0, int(newest) - int(fanned)))


class Timed:
    """A pull probe that reports each check's result and duration to the metrics."""

    def __init__(self, probe: PullProbe, probe_type: str, metrics: Metrics) -> None:
        self._probe = probe
        self._type = probe_type
        self._metrics = metrics

    async def check(self) -> Observation:
        started = time.perf_counter()
        observation = await self._probe.check()
        self._metrics.observed(self._type, observation, time.perf_counter() - started)
        return observation
