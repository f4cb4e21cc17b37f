"""`evolve`, the rules' fast `dataclasses.replace`, makes exactly what replace makes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from tocsin.probes.observation import SubjectKey
from tocsin.tracker.state import MonitorTicket, Now, SubjectHealth, SubjectState, evolve

KEY = SubjectKey("acme", "device", "pump")
WALL = datetime(2026, 12, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"health": SubjectHealth.DOWN, "since": Now(5.0, WALL), "failures": 2},
        {"ticket": MonitorTicket(7, "device_offline"), "flapping": True, "changes": (1.0, 2.0)},
    ],
)
def test_evolve_makes_what_replace_makes(changes: dict[str, object]) -> None:
    before = SubjectState(KEY, recent=(), ticket=MonitorTicket(3, "device_offline"))
    made = evolve(before, **changes)
    assert made == dataclasses.replace(before, **changes)  # type: ignore[arg-type]
    assert made is not before
    assert before == SubjectState(KEY, ticket=MonitorTicket(3, "device_offline"))  # untouched
    ticket = MonitorTicket(3, "device_offline")
    assert evolve(ticket, open=False) == dataclasses.replace(ticket, open=False)


def test_evolve_refuses_a_field_that_does_not_exist() -> None:
    with pytest.raises(TypeError, match="'healthy'"):
        evolve(SubjectState(KEY), healthy=True)
