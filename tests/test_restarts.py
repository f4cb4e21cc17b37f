"""The pause before a child process (probe worker, delivery process) is started again."""

from __future__ import annotations

from tocsin.restarts import FIRST_PAUSE, HEALTHY_RUN, MAX_PAUSE, Backoff


def test_pauses_double_while_it_keeps_failing_and_start_over_after_a_healthy_run() -> None:
    backoff = Backoff()
    pauses = [backoff.pause(0.5) for _ in range(7)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_PAUSE, MAX_PAUSE]
    assert backoff.pause(HEALTHY_RUN) == FIRST_PAUSE  # it had run a minute: healthy
    assert backoff.pause(HEALTHY_RUN - 1) == 2 * FIRST_PAUSE
