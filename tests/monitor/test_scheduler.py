"""The pull scheduler: spread, fixed rate, timeouts, no double runs, bounded concurrency."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest

from tocsin.monitor.scheduler import PullScheduler
from tocsin.probes.observation import Health, Observation, SubjectKey


def key(n: int) -> SubjectKey:
    return SubjectKey("acme", "device", f"d{n}")


class Gauge:
    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    def enter(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        self.running -= 1


class Probe:
    """A probe that answers after `delay` seconds (forever when None)."""

    def __init__(self, delay: float | None = 0.0, *gauges: Gauge) -> None:
        self.delay = delay
        self.own = Gauge()
        self.gauges = (self.own, *gauges)
        self.calls = 0

    @property
    def peak(self) -> int:
        return self.own.peak

    async def check(self) -> Observation:
        self.calls += 1
        for gauge in self.gauges:
            gauge.enter()
        try:
            if self.delay is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay)
            return Observation(Health.HEALTHY, "ok")
        finally:
            for gauge in self.gauges:
                gauge.leave()


class Results:
    def __init__(self) -> None:
        self.by_key: dict[SubjectKey, list[Observation]] = defaultdict(list)
        self.changed = asyncio.Event()

    def __call__(self, subject: SubjectKey, observation: Observation, started: float) -> None:
        self.by_key[subject].append(observation)
        self.changed.set()

    async def wait_for(self, predicate: object) -> None:
        async with asyncio.timeout(5.0):
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


async def test_it_spreads_first_runs_over_the_interval() -> None:
    scheduler = PullScheduler(Results(), monotonic=lambda: 1000.0, rng=random.Random(7))
    for n in range(10_000):
        scheduler.add(key(n), Probe(), timeout=1, interval=30)
    due = sorted(scheduler.next_due().values())
    assert len(due) == 10_000
    assert due[0] >= 1000.0
    assert due[-1] < 1030.0
    per_second = defaultdict(int)
    for at in due:
        per_second[int(at)] += 1
    # 10,000 subjects over 30 s: about 333 a second, never a stampede in one second.
    assert max(per_second.values()) < 450


async def test_it_keeps_a_fixed_rate_and_skips_missed_runs_after_a_stall() -> None:
    now = [0.0]
    scheduler = PullScheduler(Results(), monotonic=lambda: now[0], rng=random.Random(1))
    scheduler.add(key(1), Probe(), timeout=1, interval=10)
    first = scheduler.next_due()[key(1)]
    job = scheduler._jobs[key(1)]
    assert scheduler._next(job, first, first + 0.5) == pytest.approx(first + 10)
    # The loop stalled for 35 s: the next run keeps the phase and does not fire 3 catch-ups.
    assert scheduler._next(job, first, first + 35) == pytest.approx(first + 40)


async def test_a_hung_probe_times_out_without_delaying_another() -> None:
    results = Results()
    scheduler = PullScheduler(results)
    hung, quick = Probe(delay=None), Probe(delay=0)
    scheduler.add(key(1), hung, timeout=0.2, interval=0.05)
    scheduler.add(key(2), quick, timeout=0.2, interval=0.05)
    runner = asyncio.create_task(scheduler.run())
    started = time.monotonic()
    try:
        await results.wait_for(lambda: len(results.by_key[key(1)]) >= 1)
        elapsed = time.monotonic() - started
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    timed_out = results.by_key[key(1)][0]
    assert timed_out.health is Health.UNHEALTHY
    assert timed_out.error_class == "timeout"
    assert elapsed < 0.2 + 1.0 + 1.0  # its timeout plus the grace, with slack for a busy box
    assert len(results.by_key[key(2)]) >= 3  # the quick probe kept its pace meanwhile
    assert hung.peak == 1  # never started twice while the first check hung


async def test_it_bounds_concurrency_overall_and_per_host() -> None:
    results = Results()
    scheduler = PullScheduler(results, max_concurrency=5, per_host=2)
    overall = Gauge()
    shared = Probe(0.05, overall)
    for n in range(20):
        scheduler.add(key(n), shared, timeout=1, interval=0.01)
    same_host = Probe(0.05, overall)
    for n in range(20, 30):
        scheduler.add(key(n), same_host, timeout=1, interval=0.01, host="10.0.0.9")
    runner = asyncio.create_task(scheduler.run())
    try:
        await results.wait_for(lambda: sum(map(len, results.by_key.values())) >= 40)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert overall.peak == 5
    assert same_host.peak == 2


async def test_a_removed_subject_is_not_run_again() -> None:
    results = Results()
    scheduler = PullScheduler(results)
    probe = Probe()
    scheduler.add(key(1), probe, timeout=1, interval=0.02)
    scheduler.add(key(2), Probe(), timeout=1, interval=0.02)
    runner = asyncio.create_task(scheduler.run())
    try:
        await results.wait_for(lambda: len(results.by_key[key(1)]) >= 1)
        scheduler.remove(key(1))
        calls = probe.calls
        count = len(results.by_key[key(2)])
        await results.wait_for(lambda: len(results.by_key[key(2)]) >= count + 5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert probe.calls <= calls + 1  # at most the check already in flight
    assert key(1) not in scheduler.next_due()


def test_it_refuses_a_job_with_neither_or_both_schedules() -> None:
    scheduler = PullScheduler(Results())
    with pytest.raises(ValueError, match="interval or a cron"):
        scheduler.add(key(1), Probe(), timeout=1)
    with pytest.raises(ValueError, match="interval or a cron"):
        scheduler.add(key(1), Probe(), timeout=1, interval=5, cron="* * * * *")


async def test_a_cron_job_is_due_at_the_next_fire_time() -> None:
    from datetime import UTC, datetime

    wall = datetime(2026, 3, 1, 10, 7, 30, tzinfo=UTC)
    scheduler = PullScheduler(Results(), monotonic=lambda: 500.0, wall=lambda: wall)
    scheduler.add(key(1), Probe(), timeout=1, cron="*/15 * * * *")
    # next quarter hour is 10:15:00, 7.5 minutes away
    assert scheduler.next_due()[key(1)] == pytest.approx(500.0 + 450.0)


class Failing:
    """A probe whose device is down: it answers unhealthy at once."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def check(self) -> Observation:
        self.starts.append(time.monotonic())
        return Observation(Health.UNHEALTHY, "HTTP 503", error_class="http_status")


async def test_a_failing_subject_is_checked_at_its_retry_interval_until_it_is_not() -> None:
    results = Results()
    scheduler = PullScheduler(results, rng=random.Random(1))
    probe = Failing()
    scheduler.add(key(1), probe, timeout=1, interval=30.0)
    scheduler._push(scheduler._jobs[key(1)], time.monotonic())  # due now, not in 0-30 s
    runner = asyncio.create_task(scheduler.run())
    try:
        await results.wait_for(lambda: len(probe.starts) >= 1)
        scheduler.retry(key(1), 0.1)  # what the monitor says once the subject is failing
        await results.wait_for(lambda: len(probe.starts) >= 4)
        gaps = [b - a for a, b in zip(probe.starts, probe.starts[1:], strict=False)]
        assert all(0.09 <= gap < 1.0 for gap in gaps), gaps
        scheduler.retry(key(1), None)  # up again (or ticketed): back to the interval
        await asyncio.sleep(0.5)
        assert len(probe.starts) <= 6
        assert scheduler.next_due()[key(1)] > time.monotonic() + 25
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_failed_check_while_the_loop_ran_late_is_not_counted_twice_in_a_row() -> None:
    results = Results()
    lost = {"seconds": 3.0}  # the loop ran 3 s late during every check
    scheduler = PullScheduler(results, lag=lambda since: lost["seconds"])
    probe = Failing()
    scheduler.add(key(1), probe, timeout=2.5, interval=0.05)
    runner = asyncio.create_task(scheduler.run())
    try:
        await results.wait_for(lambda: len(results.by_key[key(1)]) >= 1)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert scheduler.busy_checks == 2  # two spoiled looks, then the third counts anyway
    assert len(probe.starts) == 3


async def test_a_failed_check_on_a_quiet_loop_counts_at_once() -> None:
    results = Results()
    scheduler = PullScheduler(results, lag=lambda since: 0.05)
    probe = Failing()
    scheduler.add(key(1), probe, timeout=2.5, interval=0.05)
    runner = asyncio.create_task(scheduler.run())
    try:
        await results.wait_for(lambda: len(results.by_key[key(1)]) >= 1)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert scheduler.busy_checks == 0
    assert len(probe.starts) == 1
