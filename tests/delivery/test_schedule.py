"""The retry policy and Retry-After: pure, table-driven, no clock but the one passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tocsin.config import parse
from tocsin.delivery.schedule import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DEFAULT = RetryPolicy(tuple(parse("").config.webhook_delivery.schedule), jitter=0.0)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        pytest.param(1, timedelta(seconds=5), id="after the first attempt"),
        pytest.param(2, timedelta(minutes=5), id="second"),
        pytest.param(3, timedelta(minutes=30), id="third"),
        pytest.param(4, timedelta(hours=2), id="fourth"),
        pytest.param(5, timedelta(hours=5), id="fifth"),
        pytest.param(6, timedelta(hours=10), id="sixth"),
        pytest.param(7, timedelta(hours=10), id="seventh"),
        pytest.param(8, None, id="the eighth attempt was the last"),
        pytest.param(0, None, id="no failure, no retry"),
    ],
)
def test_the_default_schedule(failures: int, delay: timedelta | None) -> None:
    assert DEFAULT.delay(failures, 0.5) == delay
    assert DEFAULT.max_attempts == 8


@given(unit=st.floats(min_value=0.0, max_value=0.999999), failures=st.integers(1, 7))
def test_jitter_stays_within_its_fraction(unit: float, failures: int) -> None:
    policy = RetryPolicy(DEFAULT.schedule, jitter=0.2)
    base = DEFAULT.schedule[failures - 1]
    delay = policy.delay(failures, unit)
    assert delay is not None
    assert base * 0.8 <= delay <= base * 1.2


def test_an_endpoint_rests_on_the_same_schedule_and_stays_at_its_end() -> None:
    assert DEFAULT.endpoint_pause(1, 0.5) == timedelta(seconds=5)
    assert DEFAULT.endpoint_pause(3, 0.5) == timedelta(minutes=30)
    assert DEFAULT.endpoint_pause(50, 0.5) == timedelta(hours=10)
    assert RetryPolicy(()).endpoint_pause(3, 0.5) == timedelta(0)


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        pytest.param("120", timedelta(seconds=120), id="seconds"),
        pytest.param(" 7 ", timedelta(seconds=7), id="spaces"),
        pytest.param("Thu, 01 Jan 2026 12:10:00 GMT", timedelta(minutes=10), id="an HTTP date"),
        pytest.param("Thu, 01 Jan 2026 11:00:00 GMT", timedelta(0), id="a date in the past"),
        pytest.param("999999999999", MAX_RETRY_AFTER, id="capped"),
        pytest.param("soon", None, id="unreadable"),
        pytest.param("-5", None, id="negative"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after(header: str | None, wait: timedelta | None) -> None:
    assert parse_retry_after(header, NOW) == wait
