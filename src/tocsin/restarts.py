"""When to start a child process again (the probe worker, the delivery process) after it
exited unasked: after 1 s, doubling up to 30 s while it keeps failing; a child that had run for
a minute counts as healthy, and its successor waits 1 s again."""

from __future__ import annotations

FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0
HEALTHY_RUN = 60.0


class Backoff:
    def __init__(self) -> None:
        self._next = FIRST_PAUSE

    def pause(self, ran: float) -> float:
        """The pause before the next start of a child that ran `ran` seconds."""
        if ran >= HEALTHY_RUN:
            self._next = FIRST_PAUSE
        pause = self._next
        self._next = min(MAX_PAUSE, pause * 2)
        return pause
