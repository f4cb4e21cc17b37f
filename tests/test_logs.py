"""Logs: secrets never come out, whatever part of a log line carries them."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from tocsin import logs

SECRET = "s3cr3t-value-9f2c"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    yield stream
    structlog.reset_defaults()


@pytest.mark.parametrize(
    ("context", "hidden_in"),
    [
        ({"token": SECRET}, "token"),
        ({"password": SECRET}, "password"),
        ({"client_secret": SECRET}, "client_secret"),
        ({"headers": {"Authorization": f"Bearer {SECRET}"}}, "headers"),
        ({"url": f"mqtts://ops:{SECRET}@broker.example:8883/"}, "url"),
        ({"detail": f"sent Authorization: Bearer {SECRET} to the API"}, "detail"),
        ({"attempts": [{"api_key": SECRET}]}, "attempts"),
    ],
    ids=[
        "token",
        "password",
        "client-secret",
        "auth-header",
        "url-credentials",
        "bearer-in-text",
        "nested-list",
    ],
)
def test_a_secret_in_a_log_lines_context_comes_out_redacted(
    json_logs: io.StringIO, context: dict[str, object], hidden_in: str
) -> None:
    structlog.get_logger("test").warning("calling the integration", **context)
    line = json_logs.getvalue().strip()
    assert SECRET not in line
    assert logs.REDACTED in line
    assert json.loads(line)["event"] == "calling the integration"
    assert hidden_in in json.loads(line)


def test_values_that_are_not_secrets_are_left_alone(
    json_logs: io.StringIO,
) -> None:
    structlog.get_logger("test").info(
        "ticket opened", org="acme", subject="device:cam-1", seq=42, url="http://10.0.0.5/health"
    )
    line = json.loads(json_logs.getvalue())
    assert line["org"] == "acme"
    assert line["seq"] == 42
    assert line["url"] == "http://10.0.0.5/health"
