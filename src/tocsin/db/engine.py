"""Engines for the store.

Reads go through an async engine (aiosqlite). Writes go through a synchronous engine driven by
one writer thread (see tocsin.db.writer): aiosqlite costs a thread hop per statement (about
300 us measured here), so a batch of writes runs whole in the thread with one hop instead.

SQLite gets WAL, synchronous=FULL, a busy timeout and, for the writer, BEGIN IMMEDIATE: a writer
takes the write lock when it starts, so two writers (the daemon and a CLI on the same file)
queue on the busy timeout instead of deadlocking on a lock upgrade.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

BUSY_TIMEOUT_MS = 10_000

# The synchronous driver the writer thread uses for each async driver a store URL may name.
_SYNC_DRIVERS = {("sqlite", "aiosqlite"): "pysqlite", ("postgresql", "asyncpg"): "psycopg"}


class StoreUrlError(ValueError):
    """The store URL cannot be used; the message says why, without the URL's password."""


@dataclass
class Database:
    """The read engine (async) and the write engine (sync, one connection, one thread)."""

    read: AsyncEngine
    write: Engine
    sqlite_path: str | None = None  # the SQLite file, for naming it in a fault; None: PostgreSQL

    async def dispose(self) -> None:
        await self.read.dispose()
        self.write.dispose()


def open_database(url: str) -> Database:
    try:
        parsed = make_url(url)
    except Exception:  # SQLAlchemy's ArgumentError; its message would repeat the URL
        raise StoreUrlError("store.url is not a database URL") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    sync_driver = _SYNC_DRIVERS.get((backend, driver))
    if sync_driver is None:
        raise StoreUrlError(
            "store.url must be sqlite+aiosqlite:///PATH (PostgreSQL: postgresql+asyncpg://...)"
        )
    if backend == "sqlite":
        _prepare_sqlite_file(parsed)
    # A PostgreSQL server that restarted (or a connection a firewall dropped) leaves dead
    # connections in the pools: each checkout pings first and replaces a dead one, so the
    # first read after a restart does not fail. A SQLite file has no connection to lose.
    pre_ping = backend == "postgresql"
    write = create_engine(
        parsed.set(drivername=f"{backend}+{sync_driver}"),
        pool_size=1,
        max_overflow=0,
        json_serializer=_json_text,
        pool_pre_ping=pre_ping,
    )
    read = create_async_engine(
        parsed, pool_size=4, max_overflow=4, json_serializer=_json_text, pool_pre_ping=pre_ping
    )
    if backend == "sqlite":
        _tune_sqlite(write, begin="BEGIN IMMEDIATE")
        _tune_sqlite(read.sync_engine, begin="BEGIN")
    path = str(Path(parsed.database).resolve()) if backend == "sqlite" and parsed.database else None
    return Database(read=read, write=write, sqlite_path=path)


def _json_text(value: Any) -> str:
    """JSON columns: what json cannot write itself (a datetime in probe data) as its text."""
    return json.dumps(value, default=str)


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StoreUrlError("the SQLite store needs a file path: sqlite+aiosqlite:///PATH")
    try:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUrlError(f"cannot create the folder for {database}: {exc.strerror}") from None


def _tune_sqlite(engine: Engine, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # The driver must not issue its own BEGIN: we issue ours in "begin" below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)
