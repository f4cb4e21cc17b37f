"""`tocsin db migrate-to URL`: copy a SQLite store into an empty PostgreSQL database.

Everything the store holds goes across with its ids: tickets, timelines, triggers, deliveries
and the outbox cursor, endpoint health, the monitor's saved state, maintenance windows, web
sessions and the per-org sequence numbers. The target gets the same migrations first and must
hold nothing yet (the rows a migration seeds aside).

The source is read under SQLite's write lock (BEGIN IMMEDIATE), so it is one consistent
snapshot and a daemon that still runs waits rather than writing what the copy would miss. The
target is written in one transaction, checked inside it (every table's row count, and a SHA-256
of every row's content compared row by row with the source) and committed only when all of it
matches: a failed or refused copy leaves the target as empty as it was. The id sequences are
moved past the copied ids, so the next ticket, event or trigger gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from tocsin.db import migrate, schema
from tocsin.db.engine import Database, StoreUrlError, open_database

CHUNK = 1000  # rows per INSERT executemany
# Rows a migration writes into an empty store, which the copy replaces.
SEEDED = {schema.outbox_cursors.name}

Progress = Callable[[str, int], None]  # (table, rows copied so far)


class CopyRefused(Exception):
    """The copy was not started: bad input (exit status 2). The message says why."""


class CopyError(Exception):
    """The copy failed and was rolled back (exit status 1). The message says why."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int
    digest: str  # SHA-256 over the table's rows in key order, the same on both sides


def _tables() -> list[Table]:
    return list(schema.metadata.sorted_tables)  # parents before children (foreign keys)


def _ordered(table: Table) -> Any:
    return select(table).order_by(*table.primary_key.columns)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def row_digest(row: Any) -> str:
    """One row's content: its columns' values in order, as canonical JSON, hashed."""
    values = [_canonical(v) for v in row]
    text_form = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text_form.encode()).hexdigest()


def _digests(conn: Connection, table: Table) -> Iterator[str]:
    for partition in conn.execute(_ordered(table)).partitions(CHUNK):
        for row in partition:
            yield row_digest(row)


def _open(url: str, what: str) -> Database:
    try:
        return open_database(url)
    except StoreUrlError as exc:
        raise CopyRefused(f"{what}: {exc}") from None


def migrate_to(source_url: str, target_url: str, progress: Progress | None = None) -> list[Copied]:
    """Copy the SQLite store at `source_url` into the empty PostgreSQL database at
    `target_url`; return each table's rows and digest."""
    try:
        target_backend = make_url(target_url).get_backend_name()
    except Exception:  # SQLAlchemy's ArgumentError repeats the URL, password and all
        raise CopyRefused("the target is not a database URL") from None
    if make_url(source_url).get_backend_name() != "sqlite":
        raise CopyRefused("migrate-to copies a SQLite store; this store is not SQLite")
    if target_backend != "postgresql":
        raise CopyRefused("the target must be postgresql+asyncpg://USER@HOST:PORT/DATABASE")
    source = _open(source_url, "store.url")
    target = _open(target_url, "the target")
    try:
        if migrate.current_revision_sync(source) != migrate.head_revision():
            raise CopyRefused("the store is not at the newest schema: run `tocsin db upgrade`")
        try:
            migrate.upgrade_sync(target)
        except Exception as exc:
            raise CopyError(f"cannot prepare the target: {type(exc).__name__}") from None
        try:
            with source.write.begin() as reading, target.write.begin() as writing:
                _refuse_unless_empty(writing)
                copied = [_copy(reading, writing, table, progress) for table in _tables()]
                _move_sequences(writing)
                return copied  # committed on leaving the block, after every table matched
        except SQLAlchemyError as exc:  # rolled back: the target is as it was
            cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise CopyError(f"the copy failed: {type(exc).__name__}: {cause}") from None
    finally:
        source.write.dispose()
        target.write.dispose()


def _refuse_unless_empty(conn: Connection) -> None:
    for table in _tables():
        statement = select(func.count()).select_from(table)
        if table.name == schema.outbox_cursors.name:  # seeded at position 0 by its migration
            statement = statement.where(table.c.position != 0)
        count = int(conn.execute(statement).scalar_one())
        if count:
            raise CopyRefused(
                f"the target database is not empty ({table.name} has {count} rows):"
                " give migrate-to a new, empty database"
            )


def _copy(
    reading: Connection, writing: Connection, table: Table, progress: Progress | None
) -> Copied:
    if table.name in SEEDED:
        writing.execute(delete(table))
    rows = 0
    for partition in reading.execute(_ordered(table)).partitions(CHUNK):
        writing.execute(insert(table), [row._asdict() for row in partition])
        rows += len(partition)
        if progress is not None:
            progress(table.name, rows)
    copied = int(writing.execute(select(func.count()).select_from(table)).scalar_one())
    if copied != rows:
        raise CopyError(f"{table.name}: {rows} rows read, {copied} in the target")
    whole = hashlib.sha256()
    mismatched = 0
    for theirs, ours in zip(_digests(reading, table), _digests(writing, table), strict=True):
        whole.update(theirs.encode())
        mismatched += theirs != ours
    if mismatched:
        raise CopyError(f"{table.name}: {mismatched} rows differ after the copy")
    return Copied(table.name, rows, whole.hexdigest())


def _move_sequences(conn: Connection) -> None:
    """PostgreSQL's id sequences past the copied ids (a copied id is never handed out again)."""
    for table in _tables():
        key = list(table.primary_key.columns)
        if len(key) != 1 or key[0].autoincrement is not True:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key[0].name}'),"
                f" COALESCE(MAX({key[0].name}), 1), MAX({key[0].name}) IS NOT NULL)"
                f" FROM {table.name}"
            )
        )
