"""Maintenance windows: while one covers a subject, it opens no ticket (it is still probed).

A window covers one subject (an id, resolved as `depends_on` is: device, integration, space),
a space (its devices and the space itself) or the subjects carrying all of some labels; it is
one-off (`start`, `end`) or recurring (`cron`, five crontab fields in UTC, + `duration`, the
occurrences computed with APScheduler's CronTrigger). Windows come from the config and, at run
time, from the API and the CLI, which keep them in the store (`maintenance_windows`).

The runtime holds a covered subject as a parent that is down would (`ParentChanged`,
`held_by` "maintenance/<id>": '/' is in no subject id): past its debounce it is unreachable
and opens nothing; when the window ends, one still down is failing from then (its debounce
counted from the end); an open ticket stays open and still resolves. This module is pure:
windows, when they are active, and whom they cover.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from tocsin.probes.observation import SubjectKey

HOLD_PREFIX = "maintenance/"
MAX_DURATION = timedelta(days=366)
MAX_REASON = 500
_CRON_LOOKBACK = 1000  # occurrences looked through for the one covering a moment, at most


class WindowError(ValueError):
    """A window that cannot be: `field` names the key (config, API field, CLI option)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Target:
    """What a window covers: exactly one of a subject id, a space id, labels."""

    subject: str | None = None
    space: str | None = None
    labels: Mapping[str, str] | None = None

    def describe(self) -> str:
        if self.subject is not None:
            return f"subject {self.subject}"
        if self.space is not None:
            return f"space {self.space}"
        return "labels " + ", ".join(f"{k}={v}" for k, v in sorted((self.labels or {}).items()))


@dataclass(frozen=True)
class Window:
    """One maintenance window of an org. `id` is "config-N" for the config's (N its place
    among them) and the store's number for those added at run time."""

    id: str
    org: str
    target: Target
    reason: str = ""
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: timedelta | None = None
    source: str = "api"  # "config" or "api" (the API and the CLI)
    created_at: datetime | None = None
    created_by: str | None = None

    def __post_init__(self) -> None:
        check(self)

    @property
    def hold(self) -> str:
        """The tracker's `held_by` for subjects this window holds."""
        return HOLD_PREFIX + self.id

    @cached_property
    def _trigger(self) -> CronTrigger | None:
        return CronTrigger.from_crontab(self.cron, timezone=UTC) if self.cron else None

    def occurrence(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The (start, end) of the occurrence covering `at` (aware UTC), or None."""
        if self.start is not None and self.end is not None:
            return (self.start, self.end) if self.start <= at < self.end else None
        trigger, duration = self._trigger, self.duration
        assert trigger is not None
        assert duration is not None
        found: tuple[datetime, datetime] | None = None
        fire = trigger.get_next_fire_time(None, at - duration)
        for _ in range(_CRON_LOOKBACK):
            if fire is None or fire > at:
                break
            found = (fire, fire + duration)  # the latest start at or before `at`
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        return found if found is not None and at < found[1] else None

    def next_change(self, at: datetime) -> datetime | None:
        """The first moment after `at` when this window starts or ends (None: never again)."""
        current = self.occurrence(at)
        if current is not None:
            return current[1]
        if self.start is not None:
            return self.start if self.start > at else None
        assert self._trigger is not None
        fire = self._trigger.get_next_fire_time(None, at + timedelta(microseconds=1))
        return None if fire is None else fire

    def over(self, at: datetime) -> bool:
        """A one-off window whose end has passed: it will never cover anything again."""
        return self.end is not None and self.end <= at

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "subject": self.target.subject,
            "space": self.target.space,
            "labels": dict(self.target.labels) if self.target.labels else None,
            "start": utc_text(self.start),
            "end": utc_text(self.end),
            "cron": self.cron,
            "duration_seconds": None if self.duration is None else self.duration.total_seconds(),
            "reason": self.reason,
            "created_at": utc_text(self.created_at),
            "created_by": self.created_by,
        }


def check(window: Window) -> None:
    """Refuse a window that cannot be, naming the key (WindowError)."""
    target = window.target
    given = [k for k in ("subject", "space", "labels") if getattr(target, k)]
    if len(given) != 1:
        raise WindowError("subject", "give exactly one of subject, space or labels")
    for key in ("subject", "space"):
        value = getattr(target, key)
        if value is not None and not _ID.match(value):
            raise WindowError(key, f"{value!r} is not a subject id (no '/', 1-128 characters)")
    if len(window.reason) > MAX_REASON:
        raise WindowError("reason", f"at most {MAX_REASON} characters")
    one_off = window.start is not None or window.end is not None
    recurring = window.cron is not None or window.duration is not None
    if one_off == recurring:
        raise WindowError("start", "give start and end, or cron and duration")
    if one_off:
        if window.start is None or window.end is None:
            raise WindowError("end" if window.end is None else "start", "give start and end")
        for key in ("start", "end"):
            value = getattr(window, key)
            if value.utcoffset() is None:
                raise WindowError(key, "needs a UTC offset (e.g. 2026-12-02T10:00:00Z)")
        if window.end <= window.start:
            raise WindowError("end", "must be after start")
        if window.end - window.start > MAX_DURATION:
            raise WindowError("end", "a window lasts at most 366 days")
        return
    if window.cron is None or window.duration is None:
        raise WindowError(
            "duration" if window.duration is None else "cron", "give cron and duration"
        )
    try:
        CronTrigger.from_crontab(window.cron, timezone=UTC)
    except ValueError as exc:
        raise WindowError("cron", f"not a crontab schedule (5 fields, UTC): {exc}") from None
    if not timedelta(0) < window.duration <= MAX_DURATION:
        raise WindowError("duration", "must be positive and at most 366 days")


_ID = re.compile(r"^[^\s/][^/]{0,127}$")


def utc_text(moment: datetime | None) -> str | None:
    """A moment as RFC 3339 UTC with a Z, as the API shows windows."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Subject:
    """What a window may match a subject by."""

    key: SubjectKey
    space: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def covers(window: Window, subject: Subject) -> bool:
    """Does `window` cover `subject` (same org; its id, its space, or all its labels)?"""
    if subject.key.org != window.org:
        return False
    target = window.target
    if target.subject is not None:
        return subject.key.id == target.subject
    if target.space is not None:
        return subject.space == target.space or (
            subject.key.type == "space" and subject.key.id == target.space
        )
    labels = target.labels or {}
    return all(subject.labels.get(k) == v for k, v in labels.items())


class Maintenance:
    """The windows in force (config + store) and whom each covers; the runtime asks which
    window holds a subject now (`holding`) and when to look again (`next_change`)."""

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        self._listing: Callable[[], Iterable[Subject]] = tuple
        self._subjects: dict[SubjectKey, Subject] | None = None  # listed while windows exist
        self._covered: dict[SubjectKey, list[Window]] = {}  # subject -> windows covering it

    def set_subjects(self, subjects: Iterable[Subject] | Callable[[], Iterable[Subject]]) -> None:
        """Every subject windows may match, or how to list them: a callable is called only
        while some window exists (at 100,000 subjects the list took 17 MiB, windows or not)."""
        self._listing = subjects if callable(subjects) else functools.partial(tuple, subjects)
        self._subjects = None
        self._index()

    def set_windows(self, windows: Iterable[Window]) -> None:
        self._windows = {f"{w.org}/{w.id}": w for w in windows}
        self._index()

    def windows(self, org: str | None = None) -> list[Window]:
        return [w for w in self._windows.values() if org is None or w.org == org]

    def _index(self) -> None:
        covered: dict[SubjectKey, list[Window]] = {}
        if not self._windows:
            self._subjects = None
        elif self._subjects is None:
            self._subjects = {s.key: s for s in self._listing()}
        subjects = self._subjects or {}
        for window in self._windows.values():
            target = window.target
            if target.subject is not None:  # by id: no need to look at every subject
                candidates: Iterable[Subject] = (
                    s
                    for kind in ("device", "integration", "space")
                    if (s := subjects.get(SubjectKey(window.org, kind, target.subject)))
                )
            else:
                candidates = subjects.values()
            for subject in candidates:
                if covers(window, subject):
                    covered.setdefault(subject.key, []).append(window)
        self._covered = covered

    def covered(self) -> Iterable[SubjectKey]:
        """Every subject some window covers (active or not)."""
        return self._covered.keys()

    def holding(self, key: SubjectKey, at: datetime) -> Window | None:
        """The window holding `key` at `at` (the one ending last, when several do)."""
        active = [(o[1], w) for w in self._covered.get(key, ()) if (o := w.occurrence(at))]
        return max(active, key=lambda pair: pair[0])[1] if active else None

    def until(self, key: SubjectKey, at: datetime) -> datetime | None:
        """When the maintenance holding `key` at `at` ends, or None."""
        window = self.holding(key, at)
        occurrence = window.occurrence(at) if window is not None else None
        return occurrence[1] if occurrence is not None else None

    def next_change(self, at: datetime) -> datetime | None:
        """The first moment after `at` when a window starts or ends."""
        changes = [c for w in self._windows.values() if (c := w.next_change(at)) is not None]
        return min(changes, default=None)
