"""How late the event loop runs: one watcher for the metrics, the scheduler and the log.

It sleeps a tenth of a second again and again; how much later than asked it wakes is the lag.
The scheduler asks `lost_since(since)` whether a failed check ran while the loop was late (then
the check measured the process, not the device). A stall of `STALL_SECONDS` or more (the machine
was paused, SIGSTOP, or the box overloaded) is logged once, when the loop runs again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

log = structlog.get_logger("tocsin.monitor")

STALL_SECONDS = 5.0


class LoopWatch:
    def __init__(
        self,
        *,
        every: float = 0.1,
        keep: float = 120.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._every = every
        self._keep = keep
        self._monotonic = monotonic
        self._on_lag = on_lag
        self._samples: deque[tuple[float, float]] = deque()  # (woke at, lag), oldest first

    def record(self, woke: float, lag: float) -> None:
        """A wake-up at `woke` that came `lag` seconds late (the watcher's loop, or a test)."""
        self._samples.append((woke, lag))
        while self._samples and self._samples[0][0] < woke - self._keep:
            self._samples.popleft()
        if self._on_lag is not None:
            self._on_lag(lag)
        if lag >= STALL_SECONDS:
            log.warning(
                "event loop stalled",
                seconds=round(lag, 1),
                hint="the machine was paused or overloaded; no check or heartbeat is judged "
                "on the time it could not watch",
            )

    def lost_since(self, since: float) -> float:
        """Seconds the loop ran late in all, from `since` until now (the sum of the lags)."""
        lost = 0.0
        for woke, lag in reversed(self._samples):
            if woke < since:
                break
            lost += lag
        return lost

    async def run(self) -> None:
        while True:
            asked = self._monotonic()
            await asyncio.sleep(self._every)
            woke = self._monotonic()
            self.record(woke, max(0.0, woke - asked - self._every))
