"""Logging through structlog: JSON lines when not on a terminal (journald, files), readable
lines on a terminal. A processor redacts secrets wherever they appear in an event's context."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"secret|token|password|passwd|authorization|api[_-]?key|cookie", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Is `key` a secret's name? Keys are few (the code's own field names): remembered."""
    return _SECRET_KEY.search(key) is not None


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        # The patterns cannot match without these; checking first makes a line with nothing
        # to hide (nearly all of them) cost a few substring tests, not two regex scans.
        if "@" in value and "://" in value:
            value = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)
        lowered = value.lower()
        if "bearer" in lowered or "basic" in lowered:
            value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(str(k)) else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: secret-named keys are replaced, credentials in text are masked."""
    for key in list(event):
        if _secret_key(key):
            event[key] = REDACTED
        else:
            event[key] = redact_value(event[key])
    return event


_debug = False


def debug_enabled() -> bool:
    """Whether debug lines are written: a hot path skips building those it would drop (a
    filtered structlog call still costs a bind, ~15 us, uncached so a reload can change the
    level)."""
    return _debug


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Log to `stream` (default stderr): JSON lines, or readable lines on a terminal."""
    global _debug
    _debug = level.lower() == "debug"
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    # A traceback on a terminal without local variables: a failing sign-in's would hold the
    # password it was given (redact_secrets sees the event's keys, not a frame's locals).
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if as_json
            else structlog.processors.StackInfoRenderer(),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
