"""Push heartbeats' deadlines and stall rule, on an injected monotonic clock: `expired` is
called once a second, as the daemon calls it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from structlog.testing import capture_logs

from tocsin.probes.observation import SubjectKey
from tocsin.probes.push import PushRegistry, PushSpec

from .test_push import SITE_SECRET, every_second

CAMERA = SubjectKey("acme", "device", "lobby-cam-1")
BACKUP = SubjectKey("acme", "other", "nightly-backup")


def push(timeout: str, grace: str = "0s") -> PushSpec:
    return PushSpec.model_validate({"type": "push", "timeout": timeout, "grace": grace})


def test_it_does_not_count_a_stall_against_a_push_subject() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push("1m"), now_mono=0)
    registry.ping(key, 100)
    assert every_second(registry, 100, 130) == {}

    with capture_logs() as logs:
        assert registry.expired(250) == []  # stopped for two minutes: 150 s silent, 31 watched
        reports = every_second(registry, 251, 400)

    assert list(reports) == [279]  # the 29 s still to run, after the wake
    assert [(e["event"], e["seconds"]) for e in logs] == [
        ("heartbeat deadlines extended after a stall", 119.0)
    ]


def test_it_takes_a_late_call_within_five_seconds_as_time_watched() -> None:
    registry = PushRegistry(SITE_SECRET)
    registry.register(CAMERA, push("1m"), now_mono=0)

    with capture_logs() as logs:
        reported = [now for now in range(6, 100, 6) if registry.expired(now)]

    assert reported == [60]
    assert logs == []


def test_it_counts_a_ping_answered_on_waking_as_answered_after_the_stall() -> None:
    registry = PushRegistry(SITE_SECRET)
    camera = registry.register(CAMERA, push("1m"), now_mono=0)
    registry.register(BACKUP, push("1m"), now_mono=0)
    every_second(registry, 0, 10)

    registry.ping(camera, 130)  # sent while the process was stopped, answered before `expired`
    reports = every_second(registry, 130, 300)

    # BACKUP had 11 s of its 60 watched; CAMERA's ping counts from the wake.
    assert {now - 130: [s for s, _ in found] for now, found in reports.items()} == {
        49: [BACKUP],
        60: [CAMERA],
    }


def test_it_says_when_the_next_window_ends_in_monotonic_time_after_a_stall() -> None:
    registry = PushRegistry(SITE_SECRET)
    registry.register(CAMERA, push("5m"), now_mono=0)
    every_second(registry, 0, 10)
    registry.expired(130)  # a stall of 119 s

    assert registry.next_deadline() == 300 + 119


@dataclass
class Watched:
    since: float
    window: float
    pinged: bool = False
    reported: bool = False


def test_it_reports_many_subjects_exactly_when_a_scan_of_every_subject_would() -> None:
    """Pings, new subjects, changed windows (longer and shorter) and removals, against the
    rule checked the slow way: every subject on every call."""
    rng = random.Random(7)
    registry = PushRegistry(SITE_SECRET)
    slow: dict[SubjectKey, Watched] = {}
    keys: dict[SubjectKey, str] = {}
    windows = [("10s", "0s"), ("30s", "5s"), ("1m", "0s"), ("2m", "30s")]
    for now in range(2000):
        for _ in range(rng.randrange(4)):
            subject = SubjectKey("acme", "device", f"d{rng.randrange(150)}")
            roll = rng.random()
            if roll < 0.6 and subject in keys:
                registry.ping(keys[subject], now)
                slow[subject].since, slow[subject].pinged, slow[subject].reported = now, True, False
            elif roll < 0.9:
                timeout, grace = rng.choice(windows)
                spec = push(timeout, grace)
                keys[subject] = registry.register(subject, spec, now_mono=now)
                if subject in slow:
                    slow[subject].window = spec.window
                else:
                    slow[subject] = Watched(now, spec.window)
            elif subject in keys:
                registry.unregister(subject)
                del keys[subject], slow[subject]
        if now % 97 == 0:
            pending = [w.since + w.window for w in slow.values() if not w.reported]
            assert registry.next_deadline() == min(pending, default=None)
        due = {subject for subject, _ in registry.expired(now)}
        expected = set()
        for subject, watched in slow.items():
            if not watched.reported and now - watched.since >= watched.window:
                watched.reported = True
                expected.add(subject)
        assert due == expected, now
