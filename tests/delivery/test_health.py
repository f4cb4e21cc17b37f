"""The failing-endpoint ticket decision: pure, table-driven, one id per case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tocsin.delivery.health import Reason, decide
from tocsin.delivery.ops import EndpointHealth, TicketMark

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
AFTER = timedelta(minutes=10)
WINDOW = timedelta(hours=24)


def failing(minutes: float, *, disabled: bool = False) -> EndpointHealth:
    return EndpointHealth(
        "ops",
        failing_since=NOW - timedelta(minutes=minutes),
        last_error="HTTP 500",
        disabled_at=NOW if disabled else None,
        disabled_reason="the receiver answered 410 Gone" if disabled else None,
    )


HEALTHY = EndpointHealth("ops", last_success_at=NOW)


def ticket(state: str, resolved_minutes_ago: float | None = None) -> TicketMark:
    resolved = NOW - timedelta(minutes=resolved_minutes_ago) if resolved_minutes_ago else None
    return TicketMark("acme", 7, state, resolved)


@pytest.mark.parametrize(
    ("health", "mark", "options", "expected"),
    [
        pytest.param(HEALTHY, None, {}, None, id="healthy, no ticket"),
        pytest.param(failing(5), None, {}, None, id="failing, inside ticket_after"),
        pytest.param(failing(10), None, {}, Reason.OPEN, id="failing for ticket_after: open"),
        pytest.param(failing(1, disabled=True), None, {}, Reason.OPEN, id="disabled: open at once"),
        pytest.param(failing(30), ticket("open"), {}, None, id="one ticket at a time"),
        pytest.param(
            failing(30, disabled=True),
            ticket("in_progress"),
            {"just_disabled": True},
            Reason.DISABLED_NOTE,
            id="disabled with a ticket open: a note",
        ),
        pytest.param(
            failing(30), ticket("resolved", 5), {}, None, id="a person resolved it: debounce"
        ),
        pytest.param(
            failing(30), ticket("resolved", 60), {}, Reason.REOPEN_IN_WINDOW, id="reopen in window"
        ),
        pytest.param(
            failing(30), ticket("resolved", 60 * 25), {}, Reason.OPEN, id="after the window: new"
        ),
        pytest.param(HEALTHY, ticket("open"), {}, Reason.AUTO_RESOLVE, id="recovered: resolve"),
        pytest.param(
            HEALTHY, ticket("in_progress"), {}, Reason.AUTO_RESOLVE, id="in progress: resolve"
        ),
        pytest.param(
            HEALTHY,
            ticket("open"),
            {"recovered": False},
            None,
            id="a person reopened it while healthy: theirs",
        ),
        pytest.param(HEALTHY, ticket("resolved", 5), {}, None, id="healthy, resolved: nothing"),
    ],
)
def test_the_failing_endpoint_ticket(
    health: EndpointHealth,
    mark: TicketMark | None,
    options: dict[str, bool],
    expected: Reason | None,
) -> None:
    decision = decide(
        "acme", health, mark, NOW, ticket_after=AFTER, reopen_window=WINDOW, **options
    )
    assert (decision.reason if decision else None) == expected
    if decision is not None:
        assert decision.org == "acme"
        assert decision.endpoint == "ops"
        if expected is Reason.OPEN:
            assert "HTTP 500" in decision.text
        if expected is Reason.DISABLED_NOTE:
            assert "tocsin webhooks enable ops" in decision.text
