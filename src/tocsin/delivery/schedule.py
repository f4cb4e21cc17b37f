"""When to try again: a pure retry policy (the schedule, jitter from an injected random number,
Retry-After) with no clock of its own."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# A Retry-After further out than this is read as this: a receiver cannot park a delivery forever.
MAX_RETRY_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class RetryPolicy:
    """`schedule[i]` is the delay after the (i+1)-th failed attempt; once it runs out, the
    delivery has failed. Each delay is spread by +/- `jitter` (a fraction) so that endpoints
    recovering together are not hit by every retry in the same second."""

    schedule: Sequence[timedelta]
    jitter: float = 0.1

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def delay(self, failures: int, unit: float) -> timedelta | None:
        """The wait after `failures` failed attempts (1 = the first); None when none is left.

        `unit` is a random number in [0, 1): 0.5 gives the schedule's delay exactly.
        """
        if failures < 1 or failures > len(self.schedule):
            return None
        return self._spread(self.schedule[failures - 1], unit)

    def endpoint_pause(self, consecutive_failures: int, unit: float) -> timedelta:
        """How long a failing endpoint rests before the next probe: the same schedule, by its
        count of failures in a row, staying at the last delay once past the end."""
        if not self.schedule:
            return timedelta(0)
        index = min(max(consecutive_failures, 1), len(self.schedule)) - 1
        return self._spread(self.schedule[index], unit)

    def _spread(self, base: timedelta, unit: float) -> timedelta:
        return base * (1.0 + self.jitter * (2.0 * unit - 1.0))


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (delay-seconds or an HTTP date) as a delay from `now`; None when
    absent or unreadable. Capped at MAX_RETRY_AFTER, never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        delay = timedelta(seconds=int(text[:9]))
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delay = moment - now
    return min(max(delay, timedelta(0)), MAX_RETRY_AFTER)
