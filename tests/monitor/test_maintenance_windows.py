"""Maintenance windows, pure: when one is active (one-off and cron), when it next changes,
whom it covers, and what cannot be a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tocsin.monitor.maintenance import Maintenance, Subject, Target, Window, WindowError
from tocsin.probes.observation import SubjectKey

T = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
CAM = SubjectKey("acme", "device", "cam-1")
LOBBY = SubjectKey("acme", "space", "lobby")


def one_off(start: float, end: float, **target: object) -> Window:
    return Window(
        id="1",
        org="acme",
        target=Target(**(target or {"subject": "cam-1"})),  # type: ignore[arg-type]
        start=T + timedelta(minutes=start),
        end=T + timedelta(minutes=end),
    )


def nightly(cron: str = "0 2 * * *", hours: float = 2) -> Window:
    return Window(
        id="2",
        org="acme",
        target=Target(subject="cam-1"),
        cron=cron,
        duration=timedelta(hours=hours),
    )


def at(minutes: float = 0, *, hours: float = 0, days: float = 0) -> datetime:
    return T + timedelta(minutes=minutes, hours=hours, days=days)


def test_a_one_off_window_covers_start_to_just_before_end() -> None:
    w = one_off(10, 20)
    assert w.occurrence(at(9.99)) is None
    assert w.occurrence(at(10)) == (at(10), at(20))
    assert w.occurrence(at(20)) is None
    assert w.next_change(at(0)) == at(10)
    assert w.next_change(at(15)) == at(20)
    assert w.next_change(at(25)) is None
    assert w.over(at(20))
    assert not w.over(at(19))


def test_a_cron_window_recurs_and_an_occurrence_may_span_midnight() -> None:
    w = nightly("0 23 * * *", hours=3)  # 23:00-02:00 UTC
    assert w.occurrence(at(hours=13, minutes=30)) == (at(hours=13), at(hours=16))  # 23:00 today
    assert w.occurrence(at(hours=15, minutes=59)) == (at(hours=13), at(hours=16))
    assert w.occurrence(at(hours=16)) is None
    assert w.occurrence(at(hours=12, minutes=59)) is None
    assert w.next_change(at(0)) == at(hours=13)
    assert w.next_change(at(hours=14)) == at(hours=16)
    assert w.occurrence(at(hours=14, days=5)) == (at(hours=13, days=5), at(hours=16, days=5))


def test_overlapping_occurrences_end_with_the_latest() -> None:
    w = nightly("0 * * * *", hours=2)  # every hour, for two
    assert w.occurrence(at(30)) == (at(0), at(hours=2))
    assert w.next_change(at(30)) == at(hours=2)


def test_the_subjects_are_listed_only_while_some_window_exists() -> None:
    """At 100,000 subjects the list windows match on took 17 MiB with no window at all."""
    listed: list[int] = []

    def subjects() -> list[Subject]:
        listed.append(1)
        return [Subject(CAM, "lobby")]

    registry = Maintenance()
    registry.set_subjects(subjects)
    registry.set_windows([])
    assert listed == []
    registry.set_windows([one_off(0, 10, space="lobby")])
    assert list(registry.covered()) == [CAM]
    registry.set_windows([one_off(0, 20, space="lobby")])
    assert len(listed) == 1  # listed once while windows come and go
    registry.set_windows([])
    assert list(registry.covered()) == []
    registry.set_windows([one_off(0, 10)])
    assert len(listed) == 2
    assert list(registry.covered()) == [CAM]


def test_whom_a_window_covers() -> None:
    registry = Maintenance()
    registry.set_subjects(
        [
            Subject(CAM, "lobby", {"rack": "A3", "vendor": "axis"}),
            Subject(SubjectKey("acme", "device", "cam-2"), "roof", {"rack": "A3"}),
            Subject(LOBBY),
            Subject(SubjectKey("beta", "device", "cam-1"), "lobby", {"rack": "A3"}),
        ]
    )
    registry.set_windows(
        [
            one_off(0, 10, space="lobby"),
            Window(
                id="7",
                org="acme",
                target=Target(labels={"rack": "A3", "vendor": "axis"}),
                start=at(0),
                end=at(5),
            ),
        ]
    )
    assert sorted(str(k) for k in registry.covered()) == ["acme/device/cam-1", "acme/space/lobby"]
    holding = registry.holding(CAM, at(1))
    assert holding is not None
    assert holding.id == "1"
    assert registry.until(CAM, at(7)) == at(10)
    assert registry.holding(CAM, at(11)) is None
    assert registry.next_change(at(1)) == at(5)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"target": Target()}, "subject", "exactly one"),
        ({"target": Target(subject="a", space="b")}, "subject", "exactly one"),
        ({"target": Target(subject="a/b")}, "subject", "not a subject id"),
        ({"end": T}, "end", "after start"),
        ({"start": T.replace(tzinfo=None)}, "start", "UTC offset"),
        ({"end": T + timedelta(days=400)}, "end", "366 days"),
        ({"cron": "0 2 * * *"}, "start", "start and end, or cron and duration"),
        ({"reason": "x" * 501}, "reason", "500"),
    ],
)
def test_what_cannot_be_a_window_names_its_field(
    fields: dict[str, object], field: str, words: str
) -> None:
    base: dict[str, object] = {
        "id": "1",
        "org": "acme",
        "target": Target(subject="cam-1"),
        "start": T,
        "end": T + timedelta(hours=1),
    }
    with pytest.raises(WindowError) as caught:
        Window(**{**base, **fields})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("cron", "duration", "field"),
    [("not cron", timedelta(hours=1), "cron"), ("0 2 * * *", timedelta(0), "duration")],
)
def test_a_bad_recurring_window_names_its_field(cron: str, duration: timedelta, field: str) -> None:
    with pytest.raises(WindowError) as caught:
        Window(id="1", org="acme", target=Target(space="x"), cron=cron, duration=duration)
    assert caught.value.field == field
