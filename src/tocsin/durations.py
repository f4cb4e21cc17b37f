"""Durations as operators write them in the config: "500ms", "90s", "2m", "24h", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raise ValueError with a readable message when it is not one."""
    compact = text.strip()
    if not compact:
        raise ValueError("a duration such as '90s', '2m' or '24h' is required, got an empty string")
    position = 0
    seconds = 0.0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (ms, s, m, h, d), e.g. '90s'"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest config-style spelling of a duration ("2m", "1h30m", "500ms")."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if total_ms:
        parts.append(f"{total_ms}ms")
    return "".join(parts)


# A config of 100,000 subjects spells the same few durations over and over: parse each spelling
# once and share its timedelta (immutable), which saves both the parsing and an object a subject.
_parse_spelling = lru_cache(maxsize=1024)(parse_duration)


def _coerce(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("durations are strings such as '90s', '2m' or '24h'")
    return _parse_spelling(value)


# A config field holding a duration: written as a string, held as a timedelta.
Duration = Annotated[timedelta, BeforeValidator(_coerce)]
