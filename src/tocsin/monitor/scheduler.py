"""Runs pull probes on their schedules.

- Interval probes start at a random offset inside their first interval, so 10,000 subjects
  never fire in the same second, then keep a fixed rate (no drift).
- Cron schedules (credential checks) get their next fire time from APScheduler's CronTrigger.
  APScheduler itself is not on the hot path: a heap and one timer serve every subject.
- Concurrency is bounded overall and per host; every check is bounded by its timeout (plus a
  second of grace), so a hung probe never delays another; a subject whose previous check is
  still running is not started twice.
- While a subject is failing its checks come sooner (`retry`, like Icinga's retry_interval for
  a soft state), so the debounce is spanned by several looks, not one.
- A failed check during which the event loop ran late (a fifth of its timeout or more in all)
  measured the process, not the device: it is not reported, and the subject is looked at again
  a second later. Only twice in a row, so a loop that stays overloaded still reports real outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.triggers.cron import CronTrigger

from tocsin.probes.base import PullProbe
from tocsin.probes.observation import Health, Observation, SubjectKey

log = structlog.get_logger("tocsin.monitor")

# (subject, what the check saw, when the check began on the monotonic clock)
ResultSink = Callable[[SubjectKey, Observation, float], None]
GRACE_SECONDS = 1.0
BUSY_RECHECK = 1.0  # seconds before a check spoiled by a busy loop is repeated
BUSY_SKIPS = 2  # spoiled checks in a row that are not reported; the next one is


@dataclass
class _Job:
    key: SubjectKey
    probe: PullProbe
    timeout: float
    interval: float | None
    cron: CronTrigger | None
    host: str | None
    generation: int
    running: bool = False
    retry: float | None = None  # the interval while failing
    due: float = 0.0  # when the job's live heap entry fires
    last_start: float | None = None
    busy_skips: int = 0


@dataclass(order=True)
class _Due:
    at: float
    order: int
    key: SubjectKey = field(compare=False)
    generation: int = field(compare=False)


class PullScheduler:
    def __init__(
        self,
        sink: ResultSink,
        *,
        max_concurrency: int = 256,
        per_host: int = 4,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        lag: Callable[[float], float] = lambda since: 0.0,
    ) -> None:
        """`lag(since)`: how many seconds the event loop ran late since that monotonic moment."""
        self._sink = sink
        self._limit = asyncio.Semaphore(max_concurrency)
        self._per_host_limit = per_host
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._monotonic = monotonic
        self._wall = wall
        self._rng = rng or random.Random()
        self._jobs: dict[SubjectKey, _Job] = {}
        self._heap: list[_Due] = []
        self._order = 0
        self._generation = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lag = lag
        self.busy_checks = 0  # failed checks not reported because the process was busy

    def __len__(self) -> int:
        return len(self._jobs)

    def add(
        self,
        key: SubjectKey,
        probe: PullProbe,
        *,
        timeout: float,
        interval: float | None = None,
        cron: str | None = None,
        host: str | None = None,
    ) -> None:
        """Schedule `probe` (replacing any probe of the same subject)."""
        if (interval is None) == (cron is None):
            raise ValueError("give an interval or a cron schedule")
        trigger = CronTrigger.from_crontab(cron, timezone=UTC) if cron else None
        self._generation += 1
        job = _Job(key, probe, timeout, interval, trigger, host, self._generation)
        self._jobs[key] = job
        first = self._rng.uniform(0, interval) if interval else self._cron_delay(job)
        self._push(job, self._monotonic() + first)

    def next_due(self) -> dict[SubjectKey, float]:
        """When each scheduled subject runs next (monotonic seconds)."""
        return {key: job.due for key, job in self._jobs.items()}

    def remove(self, key: SubjectKey) -> None:
        self._jobs.pop(key, None)  # its heap entry is skipped when it comes due

    def retry(self, key: SubjectKey, every: float | None) -> None:
        """Check `key` every `every` seconds from its last check (None: back to its schedule)."""
        job = self._jobs.get(key)
        if job is None or job.retry == every:
            return
        job.retry = every
        if every is not None and job.last_start is not None:
            sooner = max(self._monotonic(), job.last_start + every)
            if sooner < job.due:
                self._push(job, sooner)

    async def run(self) -> None:
        try:
            while True:
                now = self._monotonic()
                while self._heap and self._heap[0].at <= now:
                    due = heapq.heappop(self._heap)
                    job = self._jobs.get(due.key)
                    if job is None or job.generation != due.generation or job.due != due.at:
                        continue  # removed, replaced or rescheduled since
                    self._push(job, self._next(job, due.at, now))
                    if not job.running:
                        job.running = True
                        task = asyncio.create_task(self._check(job))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                delay = self._heap[0].at - self._monotonic() if self._heap else 3600.0
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # not wait_for: see HealthMonitor.run
                    async with asyncio.timeout(max(0.0, delay)):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _push(self, job: _Job, at: float) -> None:
        job.due = at
        self._order += 1
        heapq.heappush(self._heap, _Due(at, self._order, job.key, job.generation))
        self._wake.set()

    def _next(self, job: _Job, due: float, now: float) -> float:
        if job.retry is not None:
            return max(now, due + job.retry)
        if job.interval is None:
            return now + self._cron_delay(job)
        following = due + job.interval
        if following <= now:  # fell behind (a stalled loop): skip missed runs, keep the phase
            following += job.interval * ((now - following) // job.interval + 1)
        return following

    def _cron_delay(self, job: _Job) -> float:
        assert job.cron is not None
        now = self._wall()
        fire = job.cron.get_next_fire_time(None, now + timedelta(seconds=1))
        return max(1.0, (fire - now).total_seconds()) if fire else 86400.0

    async def _check(self, job: _Job) -> None:
        try:
            async with self._limit, self._host_limit(job.host):
                started = self._monotonic()  # when the check really began, not when it queued
                job.last_start = started
                try:
                    async with asyncio.timeout(job.timeout + GRACE_SECONDS):
                        observation = await job.probe.check()
                except TimeoutError:
                    observation = Observation(
                        Health.UNHEALTHY,
                        f"no answer within {job.timeout:g} s",
                        error_class="timeout",
                    )
            if self._jobs.get(job.key) is not job:
                return
            if self._spoiled(job, observation, started):
                self._push(job, min(job.due, self._monotonic() + BUSY_RECHECK))
                return
            self._sink(job.key, observation, started)
        finally:
            job.running = False

    def _spoiled(self, job: _Job, observation: Observation, started: float) -> bool:
        """Did a busy process, not the device, fail this check? (Not more than BUSY_SKIPS in a
        row: under lasting overload the next result counts, whatever it is.)"""
        if observation.health is not Health.UNHEALTHY or job.busy_skips >= BUSY_SKIPS:
            job.busy_skips = 0
            return False
        lost = self._lag(started)
        # A check is bounded by its timeout and the grace: one that took longer ran on a
        # stalled loop even if the loop watch has not woken to say so yet (just after SIGCONT).
        overran = self._monotonic() - started > job.timeout + GRACE_SECONDS + 0.5
        if lost < max(0.2, 0.2 * job.timeout) and not overran:
            job.busy_skips = 0
            return False
        job.busy_skips += 1
        self.busy_checks += 1
        log.debug(  # per check: under lasting load, one line each would add to it
            "check not counted: the process was busy",
            subject=str(job.key),
            loop_late=round(lost, 2),
            timeout=job.timeout,
            detail=observation.detail,
        )
        return True

    def _host_limit(self, host: str | None) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        if host is None:
            return contextlib.nullcontext()
        if host not in self._hosts:
            self._hosts[host] = asyncio.Semaphore(self._per_host_limit)
        return self._hosts[host]
