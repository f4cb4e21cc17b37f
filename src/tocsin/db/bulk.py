"""Many rows in one executemany, without SQLAlchemy's per-row parameter processing.

SQLAlchemy runs every row's parameters through the column types in Python before the driver
sees them (the UTC datetime decorator, then SQLite's datetime string, JSON encoding), and an
INSERT with RETURNING goes row by row on SQLite. For a storm's 5,000 tickets, timeline events
and trigger rows that was two thirds of the writer's time. On SQLite a `Bulk` compiles its
statement once and hands the rows straight to sqlite3's executemany, each value converted as
its column's type would (so SQLAlchemy reads them back the same); on other databases it is
SQLAlchemy's own executemany.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from tocsin.db.schema import UTCDateTime

Convert = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


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


def _converter(table: Table, name: str) -> Convert:
    column = table.c.get(name)
    if column is None:
        return _same
    if isinstance(column.type, UTCDateTime):
        return _utc_text
    if isinstance(column.type, JSON):
        return _json_converter(column.type)
    return _same


class Bulk:
    """An INSERT (or upsert) of `table` taking a list of dicts keyed by column name.

    `statement` is one for every database, or one per dialect name (an upsert's ON CONFLICT is
    spelt per dialect); `columns` are the keys a plain INSERT's rows give."""

    def __init__(
        self,
        statement: Insert | Mapping[str, Insert],
        table: Table,
        columns: Sequence[str] = (),
    ) -> None:
        self._statements = statement if isinstance(statement, Mapping) else None
        self._statement = statement if isinstance(statement, Insert) else statement["sqlite"]
        compiled = self._statement.compile(dialect=sqlite.dialect(), column_keys=list(columns))
        if compiled.positiontup is None:  # pragma: no cover - SQLite's paramstyle is qmark
            raise TypeError("the statement did not compile to positional parameters")
        self._sql = str(compiled)
        self._names = tuple(compiled.positiontup)
        converters = [_converter(table, name) for name in self._names]
        self._get = operator.itemgetter(*self._names)
        self._convert = [(i, c) for i, c in enumerate(converters) if c is not _same]

    def run(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        dialect = conn.dialect.name
        if dialect != "sqlite":
            statements = self._statements
            conn.execute(statements[dialect] if statements else self._statement, list(rows))
            return
        conn.exec_driver_sql(self._sql, [self._values(row) for row in rows])

    def _values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        got = self._get(row)
        values = list(got) if len(self._names) > 1 else [got]
        for i, convert in self._convert:
            values[i] = convert(values[i])
        return tuple(values)
