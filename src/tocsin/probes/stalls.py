"""Time a process could watch: monotonic time less the stalls it slept through.

A paused machine or VM (SIGSTOP), an event loop blocked for long: a process that cannot run
reads no MQTT message and answers no push ping, so no heartbeat deadline may run out on that
time. Heartbeat times are kept on a `WatchedClock`, so a stall extends every deadline at once,
without touching any.

A periodic check `tick`s. One that comes more than STALL_GRACE later than `period` after the
one before reveals a stall, its lateness beyond `period`, which is added to `stalled`.
"""

from __future__ import annotations

import math

import structlog

log = structlog.get_logger("tocsin.probes")

STALL_GRACE = 5.0


class WatchedClock:
    __slots__ = ("_last", "_overdue", "context", "period", "stalled")

    def __init__(self, period: float, **context: str) -> None:
        self.period = period
        self.context = context  # what the log line names (a broker, "push")
        self.stalled = 0.0
        self._last: float | None = None
        self._overdue = math.inf  # a tick after this reveals a stall

    def tick(self, now: float) -> float:
        """The periodic check runs at monotonic `now`; the watched time."""
        last, self._last = self._last, now
        self._overdue = now + self.period + STALL_GRACE
        if last is not None and (excess := now - last - self.period) > STALL_GRACE:
            self.stalled += excess
            log.info(
                "heartbeat deadlines extended after a stall",
                seconds=round(excess, 1),
                **self.context,
            )
        return now - self.stalled

    def at(self, now: float) -> float:
        """The watched time of an event (a message, a ping) at monotonic `now`. Waking from a
        stall, the process may handle events before its periodic check runs: the first stands
        in for it."""
        if now > self._overdue:
            return self.tick(now)
        return now - self.stalled
