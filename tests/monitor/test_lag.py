"""The loop watch: how late the event loop ran, and a stall said once."""

from __future__ import annotations

import structlog

from tocsin.monitor.lag import LoopWatch


def test_it_adds_up_how_late_the_loop_ran_since_a_moment() -> None:
    watch = LoopWatch(keep=10.0)
    for woke, lag in ((1.0, 0.01), (2.0, 0.4), (3.0, 0.3), (4.0, 0.0)):
        watch.record(woke, lag)
    assert round(watch.lost_since(1.5), 6) == 0.7
    assert round(watch.lost_since(0.0), 6) == 0.71
    assert watch.lost_since(5.0) == 0.0


def test_it_forgets_samples_older_than_it_keeps() -> None:
    watch = LoopWatch(keep=10.0)
    watch.record(1.0, 2.0)
    watch.record(20.0, 0.0)
    assert watch.lost_since(0.0) == 0.0


def test_a_stall_is_logged_once_when_the_loop_runs_again() -> None:
    seen: list[float] = []
    watch = LoopWatch(on_lag=seen.append)
    with structlog.testing.capture_logs() as logs:
        watch.record(1.0, 0.2)
        watch.record(125.0, 120.0)  # SIGSTOP for two minutes
        watch.record(125.1, 0.0)
    stalls = [entry for entry in logs if entry["event"] == "event loop stalled"]
    assert len(stalls) == 1
    assert stalls[0]["seconds"] == 120.0
    assert seen == [0.2, 120.0, 0.0]
