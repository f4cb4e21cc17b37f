"""Many rows in one executemany, without SQLAlchemy's per-row parameter processing.

SQLAlchemy runs every row's parameters through the bind types in Python before the driver
sees them (the UTC datetime decorator, then SQLite's datetime string, JSON encoding), and an
INSERT with RETURNING goes row by row on SQLite. For a storm's 5,000 tickets, timeline events
and trigger rows that was two thirds of the writer's time, and the same again for webhook
deliveries. On SQLite a `Bulk` compiles its statement once and hands the rows straight to
sqlite3's executemany, each value converted as its bind's type would (so SQLAlchemy reads them
back the same); on other databases it is SQLAlchemy's own executemany.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import UpdateBase

from tocsin.db.schema import UTCDateTime

Convert = Callable[[Any], Any]


def _utc_text(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite DateTime stores for UTCDateTime: naive UTC, microseconds."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store: pass an aware UTC datetime")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json_converter(column_type: JSON) -> Convert:
    none_as_null = column_type.none_as_null

    def convert(value: Any) -> str | None:
        if value is None and none_as_null:
            return None
        return json.dumps(value, default=str)  # as the engine's json_serializer

    return convert


def _converter(bind_type: Any) -> Convert | None:
    """How a value of `bind_type` goes to sqlite3; None: as it is."""
    if isinstance(bind_type, UTCDateTime):
        return _utc_text
    if isinstance(bind_type, JSON):
        return _json_converter(bind_type)
    if isinstance(bind_type, String | Integer | Boolean):  # sqlite3 takes these unchanged
        return None
    raise TypeError(f"Bulk does not know how to write a {type(bind_type).__name__} parameter")


class Bulk:
    """An INSERT, upsert or UPDATE run with a list of dicts keyed by its parameters' names
    (for a plain INSERT, the `columns` its rows give).

    `statement` is one for every database, or one per dialect name (an upsert's ON CONFLICT is
    spelt per dialect). `run` returns the rows changed."""

    def __init__(
        self,
        statement: UpdateBase | Mapping[str, UpdateBase],
        columns: Sequence[str] = (),
    ) -> None:
        self._statements = statement if isinstance(statement, Mapping) else None
        self._statement = statement["sqlite"] if isinstance(statement, Mapping) else statement
        compiled = self._statement.compile(dialect=sqlite.dialect(), column_keys=list(columns))
        if compiled.positiontup is None:  # pragma: no cover - SQLite's paramstyle is qmark
            raise TypeError("the statement did not compile to positional parameters")
        self._sql = str(compiled)
        names = list(compiled.positiontup)
        binds = [compiled.binds[name] for name in names]
        # A value the statement itself gives (status='delivered') is a bind with its value.
        self._template: list[Any] = []
        self._from_row: list[tuple[int, str]] = []
        self._convert: list[tuple[int, Convert]] = []
        for i, (name, bind) in enumerate(zip(names, binds, strict=True)):
            convert = _converter(bind.type)
            if bind.required:
                self._template.append(None)
                self._from_row.append((i, name))
                if convert is not None:
                    self._convert.append((i, convert))
            else:
                value = bind.effective_value
                self._template.append(value if convert is None else convert(value))

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        dialect = conn.dialect.name
        if dialect != "sqlite":
            statements = self._statements
            statement = statements[dialect] if statements else self._statement
            return int(conn.execute(statement, list(rows)).rowcount)
        result = conn.exec_driver_sql(self._sql, [self._values(row) for row in rows])
        return int(result.rowcount)

    def _values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = self._template.copy()
        for i, name in self._from_row:
            values[i] = row[name]
        for i, convert in self._convert:
            values[i] = convert(values[i])
        return tuple(values)
