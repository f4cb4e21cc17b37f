"""Maintenance windows added at run time, in the store: written through the store's writer
(the API) or a connection of its own (the CLI), read by the daemon at start and every few
seconds (so the CLI's windows count too), and by `GET .../maintenance`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tocsin.db import schema
from tocsin.monitor.maintenance import Target, Window, WindowError

M = schema.maintenance_windows


def add(conn: Connection, window: Window) -> Window:
    """Insert `window` (its id is ignored); the window with the id the store gave it."""
    target = window.target
    row = conn.execute(
        insert(M)
        .values(
            org=window.org,
            subject_id=target.subject,
            space_id=target.space,
            labels=dict(target.labels) if target.labels else None,
            start_at=window.start,
            end_at=window.end,
            cron=window.cron,
            duration_seconds=_seconds(window.duration),
            reason=window.reason,
            created_at=window.created_at,
            created_by=window.created_by,
        )
        .returning(M.c.id)
    ).one()
    return _with_id(window, str(row.id))


def remove(conn: Connection, org: str, window_id: str) -> bool:
    """Delete the org's window `window_id`; whether there was one."""
    if not (window_id.isascii() and window_id.isdigit() and len(window_id) <= 18):
        return False
    result = conn.execute(delete(M).where(M.c.org == org, M.c.id == int(window_id)))
    return bool(result.rowcount)


async def load(engine: AsyncEngine, org: str | None = None) -> list[Window]:
    """The windows in the store (an org's, or all), oldest first."""
    statement = select(M).order_by(M.c.id)
    if org is not None:
        statement = statement.where(M.c.org == org)
    async with engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    return [window for row in rows if (window := _from_row(row._mapping)) is not None]


def _from_row(row: Any) -> Window | None:
    duration = row["duration_seconds"]
    try:
        return Window(
            id=str(row["id"]),
            org=row["org"],
            target=Target(row["subject_id"], row["space_id"], row["labels"] or None),
            reason=row["reason"],
            start=row["start_at"],
            end=row["end_at"],
            cron=row["cron"],
            duration=None if duration is None else timedelta(seconds=duration),
            source="api",
            created_at=row["created_at"],
            created_by=row["created_by"],
        )
    except WindowError:  # written by a newer tocsin with rules this one does not know
        return None


def _with_id(window: Window, window_id: str) -> Window:
    return replace(window, id=window_id)


def _seconds(duration: timedelta | None) -> int | None:
    return None if duration is None else int(duration.total_seconds())
