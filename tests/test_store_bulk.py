"""Opening many monitor tickets in one operation writes exactly what opening them one by one
writes: the same tickets, timeline events and trigger rows, gap-free sequences per org."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, update
from sqlalchemy.dialects import sqlite

from tests.conftest import FakeClock
from tests.test_store import monitor_open, snapshot, workflow_open
from tocsin.db import migrate, schema
from tocsin.db.bulk import Bulk
from tocsin.db.engine import Database, _json_text, open_database
from tocsin.tickets.store import TicketStore

pytestmark = pytest.mark.engines

IGNORED = {"id", "ticket_id", "event_id"}  # row ids differ only by insertion order


def comparable(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        table: [{k: v for k, v in row.items() if k not in IGNORED} for row in found]
        for table, found in rows.items()
    }


async def test_opening_in_bulk_writes_what_opening_one_by_one_writes(
    tmp_path: Any, clock: FakeClock
) -> None:
    requests = [
        monitor_open("acme", subject_id=f"d{i}", description=f"down {i}") for i in range(5)
    ] + [monitor_open("beta", subject_id="pump", description="dry")]
    moments = [clock.now + timedelta(seconds=i) for i in range(len(requests))]
    written = []
    for name, bulk in (("one-by-one", False), ("bulk", True)):
        database = open_database(f"sqlite+aiosqlite:///{tmp_path / name}.db")
        await migrate.upgrade(database)
        store = TicketStore(database, clock=clock)
        store.start()
        try:
            await store.open(workflow_open())  # acme's sequence already moved on
            if bulk:
                changes = await store.open_plain(list(zip(requests, moments, strict=True)))
            else:
                changes = [
                    await store.open(r, at=m) for r, m in zip(requests, moments, strict=True)
                ]
            written.append(comparable(await snapshot(database)))
        finally:
            await store.close()
            await database.dispose()
        assert [(c.ticket.org, c.ticket.seq) for c in changes] == [
            ("acme", 2),
            ("acme", 3),
            ("acme", 4),
            ("acme", 5),
            ("acme", 6),
            ("beta", 1),
        ]
        assert [c.ticket.opened_at for c in changes] == moments
    assert written[0] == written[1]


async def test_a_bulk_open_refuses_what_needs_a_look_up_first(store: TicketStore) -> None:
    with pytest.raises(ValueError, match="dedup_key"):
        await store.open_plain([(workflow_open(dedup_key="k"), datetime.now(UTC))])


async def test_bulk_open_ids_link_each_ticket_to_its_own_event_and_trigger(
    store: TicketStore, database: Database, clock: FakeClock
) -> None:
    await store.open(workflow_open())  # ids and seqs of the batch start past existing rows
    requests = [monitor_open(org, subject_id=f"d{i}") for i in range(40) for org in ("a", "b")]
    changes = await store.open_plain([(r, clock.now) for r in requests])
    rows = await snapshot(database)
    tickets = {(t["org"], t["seq"]): t["id"] for t in rows["tickets"]}
    events = {e["id"]: e for e in rows["timeline_events"]}
    triggers = {t["event_id"]: t for t in rows["triggers"]}
    for change in changes:
        assert change.event is not None
        assert tickets[(change.ticket.org, change.ticket.seq)] == change.ticket.id
        assert events[change.event.id]["ticket_id"] == change.ticket.id
        trigger = triggers[change.event.id]
        assert trigger["ticket_id"] == change.ticket.id
        assert trigger["data"]["event"]["id"] == change.event.id
        assert trigger["data"]["ticket"]["seq"] == change.ticket.seq
    assert len({c.event.id for c in changes if c.event}) == len(requests)


def test_bulk_rows_read_back_as_sqlalchemy_wrote_them(tmp_path: Any) -> None:
    """Byte for byte the same values in the file as SQLAlchemy's own executemany writes, so
    rows written either way compare and sort alike."""
    table = schema.subject_states
    statement = sqlite.insert(table)
    moment = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)  # no microseconds: still .000000
    rows = [
        {
            "org": "acme",
            "subject_type": "device",
            "subject_id": f"d{i}",
            "name": "Pump",
            "health": "down",
            "flapping": i == 0,
            "since": None if i == 0 else moment + timedelta(microseconds=i),
            "ticket_seq": None if i == 0 else i,
            "last_result": None if i == 0 else {"ok": False, "detail": "é"},
            "state": {"health": "down", "n": [1, 2]},
            "updated_at": moment.astimezone(timezone(timedelta(hours=2))),
        }
        for i in range(3)
    ]
    written = []
    for name in ("sqlalchemy", "bulk"):
        engine = create_engine(f"sqlite:///{tmp_path / name}.db", json_serializer=_json_text)
        schema.metadata.create_all(engine)
        with engine.begin() as conn:
            if name == "bulk":
                Bulk(statement, list(rows[0])).run(conn, rows)
            else:
                conn.execute(statement, rows)
        with engine.connect() as conn:
            written.append(conn.exec_driver_sql("SELECT * FROM subject_states").all())
        engine.dispose()
    assert written[0] == written[1]
    with pytest.raises(ValueError, match="naive datetime"):
        Bulk(statement, list(rows[0]))._values({**rows[0], "updated_at": datetime.now()})


def test_a_bulk_update_writes_the_statements_own_values_and_counts_its_rows(
    tmp_path: Any,
) -> None:
    table = schema.subject_states
    moment = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    change = (
        update(table)
        .where(table.c.subject_id == bindparam("which"))
        .values(health="up", since=bindparam("at"), last_result=None)
    )
    written = []
    for name in ("sqlalchemy", "bulk"):
        engine = create_engine(f"sqlite:///{tmp_path / name}.db", json_serializer=_json_text)
        schema.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                sqlite.insert(table),
                [
                    {
                        "org": "acme",
                        "subject_type": "device",
                        "subject_id": f"d{i}",
                        "name": "Pump",
                        "health": "down",
                        "flapping": False,
                        "last_result": {"ok": False},
                        "state": {},
                        "updated_at": moment,
                    }
                    for i in range(3)
                ],
            )
            rows = [{"which": "d0", "at": moment}, {"which": "d2", "at": moment}]
            rows.append({"which": "gone", "at": moment})
            if name == "bulk":
                assert Bulk(change).run(conn, rows) == 2
            else:
                assert conn.execute(change, rows).rowcount == 2
        with engine.connect() as conn:
            written.append(conn.exec_driver_sql("SELECT * FROM subject_states").all())
        engine.dispose()
    assert written[0] == written[1]
    assert [row[4] for row in written[1]] == ["up", "down", "up"]
