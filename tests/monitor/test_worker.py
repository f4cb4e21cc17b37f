"""Pull probes in a worker process (tocsin.monitor.worker): real child processes, a real
aiohttp device; results come back to the daemon's sink, the schedule follows add/remove, a
killed worker is started again with its whole schedule, and stopping leaves no process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.conftest import Switchable
from tests.peers import process_alive
from tocsin.metrics import Metrics
from tocsin.monitor.worker import (
    RESULTS_EVERY,
    SPARE_FROM_BYTES,
    WorkerProcess,
    WorkerPulls,
    cpus,
)
from tocsin.monitor.worker import spare as spare_for
from tocsin.probes.http import HttpSpec
from tocsin.probes.observation import Health, Observation, SubjectKey

INTERVAL = 0.2


def key(n: int) -> SubjectKey:
    return SubjectKey("acme", "device", f"cam-{n}")


def spec(url: str) -> HttpSpec:
    return HttpSpec.model_validate({"type": "http", "url": url, "timeout": "1s"})


Seen = list[tuple[SubjectKey, Observation, float]]


def pulls_into(
    seen: Seen, metrics: Metrics | None = None, spare: WorkerProcess | None = None
) -> WorkerPulls:
    return WorkerPulls(
        lambda k, o, at: seen.append((k, o, at)),
        base_dir=None,
        environ={},
        max_concurrency=16,
        per_host=16,
        log_format="json",
        metrics=metrics,
        spare=spare,
    )


async def until(check: Callable[[], bool], within: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {within} s"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(pulls: WorkerPulls) -> AsyncIterator[asyncio.Event]:
    started = asyncio.Event()
    task = asyncio.create_task(pulls.run(started))
    await asyncio.sleep(0.5)
    assert not started.is_set()  # the process may start, but checks wait for go()
    assert not pulls.handed_over.is_set()  # MQTT waits for the schedule to be sent
    pulls.go()
    try:
        async with asyncio.timeout(20):
            await pulls.handed_over.wait()
            await started.wait()
        yield started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_results_come_back_and_follow_the_schedule(
    switchable: tuple[Switchable, str],
) -> None:
    state, url = switchable
    seen: Seen = []
    metrics = Metrics()
    pulls = pulls_into(seen, metrics)
    pulls.add(key(1), spec(url), INTERVAL)  # before the worker runs: sent when it starts
    async with running(pulls):
        assert pulls.pid is not None
        assert pulls.pid != os.getpid()
        assert process_alive(pulls.pid)
        await until(lambda: any(k == key(1) for k, _, _ in seen), what="a first result")
        before = time.monotonic()
        assert all(o.health is Health.HEALTHY and at <= before for _, o, at in seen)

        pulls.add(key(2), spec(url), INTERVAL)  # while it runs
        state.ok = False
        await until(
            lambda: {k for k, o, _ in seen if o.health is Health.UNHEALTHY} == {key(1), key(2)},
            what="both unhealthy",
        )
        failed = next(o for k, o, _ in seen if o.health is Health.UNHEALTHY)
        assert "503" in failed.detail

        pulls.remove(key(1))
        await asyncio.sleep(INTERVAL * 2)  # a check in flight may still land ...
        count = len(seen)
        await asyncio.sleep(INTERVAL * 4)  # ... then only key 2 is looked at
        assert {k for k, _, _ in seen[count:]} == {key(2)}
        assert len(pulls) == 1
    runs = metrics.probe_runs.labels("http")._value.get()
    assert runs == len(seen)  # recorded in the daemon's metrics, as inline


async def test_results_come_back_in_batches_not_a_frame_each(
    switchable: tuple[Switchable, str],
) -> None:
    """At 20,000 pull subjects a frame per result (a write, and a wake-up of the daemon, every
    one or two results) cost the worker a tenth of its time: results are sent every
    RESULTS_EVERY seconds, each still carrying when its check began."""
    _, url = switchable
    seen: Seen = []
    pulls = pulls_into(seen)
    frames: list[int] = []
    deliver = pulls._deliver

    def counted(results: list[tuple[SubjectKey, Observation, float, float]]) -> None:
        frames.append(len(results))
        deliver(results)

    pulls._deliver = counted  # type: ignore[method-assign]
    for n in range(20):
        pulls.add(key(n), spec(url), 0.05)  # 400 checks a second
    async with running(pulls):
        await until(lambda: len(seen) >= 400, what="400 results")
        seconds = (time.monotonic() - min(at for _, _, at in seen)) + RESULTS_EVERY
    # One frame a loop turn would send about as many frames as results.
    assert len(frames) <= seconds / RESULTS_EVERY + 3, (len(frames), seconds, sum(frames))
    assert sum(frames) >= 400


async def test_a_killed_worker_is_started_again_with_its_schedule(
    switchable: tuple[Switchable, str],
) -> None:
    _, url = switchable
    seen: Seen = []
    pulls = pulls_into(seen)
    for n in range(3):
        pulls.add(key(n), spec(url), INTERVAL)
    async with running(pulls):
        first = pulls.pid
        assert first is not None
        await until(lambda: {k for k, _, _ in seen} == {key(0), key(1), key(2)}, what="all")
        os.kill(first, signal.SIGKILL)
        await until(lambda: pulls.starts == 2, what="a second worker")
        assert pulls.pid != first
        count = len(seen)
        await until(lambda: {k for k, _, _ in seen[count:]} == {key(0), key(1), key(2)})
    assert not process_alive(first)


async def test_stopping_ends_the_worker_and_sigterm_alone_does_not(
    switchable: tuple[Switchable, str],
) -> None:
    _, url = switchable
    seen: Seen = []
    pulls = pulls_into(seen)
    pulls.add(key(1), spec(url), INTERVAL)
    async with running(pulls):
        pid = pulls.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # systemd signals the whole unit: the daemon stops it
        count = len(seen)
        await until(lambda: len(seen) > count + 2, what="results after SIGTERM")
        assert pulls.starts == 1
        assert process_alive(pid)
        began = time.monotonic()
    await until(lambda: not process_alive(pid), within=2.0, what="the worker gone")
    assert time.monotonic() - began < 2.0


async def test_a_spare_started_before_the_daemon_runs_is_the_worker_and_gets_its_schedule_early(
    switchable: tuple[Switchable, str],
) -> None:
    _, url = switchable
    spare = WorkerProcess()  # as the CLI does, before the config is parsed
    seen: Seen = []
    pulls = pulls_into(seen, spare=spare)
    pulls.add(key(1), spec(url), INTERVAL)
    pulls.add(key(2), spec(url), INTERVAL)
    pulls.preload()  # the schedule so far goes to the spare before the daemon runs ...
    pulls.add(key(3), spec(url), INTERVAL)  # ... and what changes meanwhile follows it
    pulls.remove(key(2))
    await asyncio.sleep(INTERVAL * 3)
    assert not seen  # nothing is checked before go
    async with running(pulls):
        assert pulls.pid == spare.pid
        assert pulls.starts == 1
        pulls.add(key(4), spec(url), INTERVAL)
        await until(lambda: {k for k, _, _ in seen} >= {key(1), key(3), key(4)}, what="all")
        count = len(seen)
        await asyncio.sleep(INTERVAL * 3)
        assert key(2) not in {k for k, _, _ in seen[count:]}
    await until(lambda: not process_alive(spare.pid), within=2.0, what="the worker gone")


def test_a_spare_nobody_takes_ends_when_closed() -> None:
    spare = WorkerProcess()
    assert process_alive(spare.pid)
    spare.close()
    assert not process_alive(spare.pid)
    spare.close()  # again, as the daemon's last word after the monitor ended it: no error


def test_a_spare_is_started_only_for_a_large_config(tmp_path: Path) -> None:
    small = tmp_path / "small.toml"
    small.write_text("[server]\n")
    assert spare_for(small) is None
    assert spare_for(tmp_path / "missing.toml") is None  # the parse reports it
    large = tmp_path / "large.toml"
    large.write_text("# padding\n" * (SPARE_FROM_BYTES // 10 + 1))
    started = spare_for(large)
    try:
        assert (started is not None) == (cpus() > 1)
    finally:
        if started is not None:
            started.close()
