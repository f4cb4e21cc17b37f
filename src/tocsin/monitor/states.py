"""The tracker's state in the database: one row per subject, upserted in batches through the
store's writer, read back at start and by the subjects API and CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tocsin.db import schema
from tocsin.db.bulk import Bulk
from tocsin.probes.observation import SubjectKey

S = schema.subject_states


@dataclass(frozen=True)
class StateRow:
    key: SubjectKey
    name: str
    health: str  # unknown | up | failing | down | recovering | unreachable
    flapping: bool
    since: datetime | None
    ticket_seq: int | None  # the subject's open health-monitor ticket, if any
    last_result: dict[str, Any] | None
    state: dict[str, Any]  # the tracker's persisted form
    updated_at: datetime
    maintenance_until: datetime | None = None  # live rows: the window holding it ends then

    def params(self) -> dict[str, Any]:
        return {
            "org": self.key.org,
            "subject_type": self.key.type,
            "subject_id": self.key.id,
            "name": self.name,
            "health": self.health,
            "flapping": self.flapping,
            "since": self.since,
            "ticket_seq": self.ticket_seq,
            "last_result": self.last_result,
            "state": self.state,
            "updated_at": self.updated_at,
        }


def _upsert(dialect: str) -> Insert:
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(S)
    columns = (
        "name",
        "health",
        "flapping",
        "since",
        "ticket_seq",
        "last_result",
        "state",
        "updated_at",
    )
    statement = insert.values({c.name: bindparam(c.name) for c in S.columns})
    return statement.on_conflict_do_update(
        index_elements=[S.c.org, S.c.subject_type, S.c.subject_id],
        set_={name: statement.excluded[name] for name in columns},
    )


_UPSERT = Bulk({name: _upsert(name) for name in ("sqlite", "postgresql")})


def save(conn: Connection, rows: list[StateRow]) -> None:
    """Upsert `rows` (a writer operation: run it through the store's GroupWriter)."""
    _UPSERT.run(conn, [row.params() for row in rows])


_FORGET = S.delete().where(
    S.c.org == bindparam("o"), S.c.subject_type == bindparam("t"), S.c.subject_id == bindparam("i")
)


def forget(conn: Connection, keys: list[SubjectKey]) -> None:
    """Drop the state of subjects no longer configured (one executemany)."""
    if keys:
        conn.execute(_FORGET, [{"o": k.org, "t": k.type, "i": k.id} for k in keys])


async def load(engine: AsyncEngine, org: str | None = None) -> list[StateRow]:
    statement = select(S).order_by(S.c.org, S.c.subject_type, S.c.subject_id)
    if org is not None:
        statement = statement.where(S.c.org == org)
    async with engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    return [_row(r._mapping) for r in rows]


def _row(m: Any) -> StateRow:
    return StateRow(
        key=SubjectKey(m["org"], m["subject_type"], m["subject_id"]),
        name=m["name"],
        health=m["health"],
        flapping=bool(m["flapping"]),
        since=m["since"],
        ticket_seq=m["ticket_seq"],
        last_result=m["last_result"],
        state=dict(m["state"]),
        updated_at=m["updated_at"],
    )
