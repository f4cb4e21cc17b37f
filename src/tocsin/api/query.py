"""Reading query strings and path numbers: every bad value is a 4xx naming its field."""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import TypeVar

from multidict import MultiMapping

from tocsin.api.errors import ApiError

E = TypeVar("E", bound=StrEnum)
MAX_DIGITS = 18  # fits the database's 64-bit integers


def refuse_unknown(query: MultiMapping[str], allowed: Collection[str]) -> None:
    for name in query:
        if name not in allowed:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter {name!r}", name)


def enum_values(query: MultiMapping[str], name: str, kind: type[E]) -> list[E]:
    """A repeatable parameter (`?state=a&state=b` or `?state=a,b`), duplicates dropped."""
    values: list[E] = []
    for value in query.getall(name, []):
        for part in value.split(","):
            values.append(_member(kind, name, part.strip()))
    return list(dict.fromkeys(values))


def enum_value(query: MultiMapping[str], name: str, kind: type[E]) -> E | None:
    value = query.get(name)
    return _member(kind, name, value) if value else None


def limit(query: MultiMapping[str], maximum: int, default: int = 50) -> int:
    raw = query.get("limit", str(default))
    if not whole_number(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(422, "invalid_value", f"limit: a whole number from 1 to {maximum}", "limit")
    return int(raw)


def whole_number(raw: str) -> bool:
    """ASCII digits only ("²" passes isdigit() but not int()), few enough for the database."""
    return raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS


def _member(kind: type[E], name: str, value: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ApiError(
            422, "invalid_value", f"{name}: {value!r} is not one of {allowed}", name
        ) from None
