"""The storm cap: at most `limit` health-monitor tickets open per org per minute; past it, one
ticket for the org (a `multiple_devices_offline` ticket whose subject is `other:storm`) takes
the place of the rest until the storm is over.

Pure bookkeeping: when each ticket of an org was due (opened, or held by the storm in place of
one), and whether the storm is on. The runtime holds the failing subjects of an org whose storm
is on (`held_by` STORM_HOLD), as a space holds its devices, and tracks the storm subject with
the same rules: it opens when the first held subject passes its debounce, lists them, and
resolves when every one is back. The storm is over when fewer than `limit` tickets fell due in
the last minute; subjects it holds stay on its ticket until they recover.
"""

from __future__ import annotations

from collections import deque

from tocsin.probes.observation import SubjectKey

STORM_HOLD = "storm/"  # the held_by of subjects the storm holds ('/' is in no subject id)
STORM_ID = "storm"  # the storm subject's id (type other) in each org
STORM_WINDOW = 60.0  # s: "per minute"


def storm_key(org: str) -> SubjectKey:
    return SubjectKey(org, "other", STORM_ID)


class StormCap:
    def __init__(self, limit: int = 50) -> None:
        self.limit = limit  # 0: no cap
        self._due: dict[str, deque[float]] = {}
        self._on: set[str] = set()

    def due(self, org: str, now: float) -> bool:
        """A ticket of `org` fell due at monotonic `now` (opened, or held in place of one);
        whether this started the storm."""
        if not self.limit:
            return False
        times = self._due.setdefault(org, deque())
        times.append(now)
        self._forget(times, now)
        if org not in self._on and len(times) >= self.limit:
            self._on.add(org)
            return True
        return False

    def on(self, org: str) -> bool:
        return org in self._on

    def count(self, org: str, now: float) -> int:
        times = self._due.get(org)
        if times is None:
            return 0
        self._forget(times, now)
        return len(times)

    def ended(self, now: float) -> list[str]:
        """The orgs whose storm is over at `now` (fewer than `limit` due in a minute)."""
        over = [org for org in self._on if self.count(org, now) < self.limit]
        self._on.difference_update(over)
        return over

    @staticmethod
    def _forget(times: deque[float], now: float) -> None:
        while times and times[0] <= now - STORM_WINDOW:
            times.popleft()
