"""Restoring the monitor at start takes a few bulk queries whatever the number of subjects, and
loses no link between a subject and its open ticket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, insert
from sqlalchemy.engine import Connection

from tests.monitor.test_runtime import Clocks
from tocsin.db import schema
from tocsin.db.engine import Database
from tocsin.monitor import states
from tocsin.monitor.runtime import HealthMonitor
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.store import TicketStore
from tocsin.tracker import Now, SubjectHealth, Windows, adopt_open_ticket, dump, initial

pytestmark = pytest.mark.engines

SUBJECTS = 50_000
RESOLVED_BY_PERSON = 7  # these tickets were resolved while the daemon was down


@pytest.fixture
async def tickets(database: Database) -> AsyncIterator[TicketStore]:
    store = TicketStore(database)
    store.start()
    yield store
    await store.close()


def seed(conn: Connection, keys: list[SubjectKey], saved_at: datetime) -> None:
    """A monitor ticket per subject (a few resolved by a person since) and its saved state."""
    rows = []
    for seq, key in enumerate(keys, start=1):
        resolved = seq <= RESOLVED_BY_PERSON
        rows.append(
            {
                "org": key.org,
                "seq": seq,
                "state": "resolved" if resolved else "open",
                "source": "health_monitor",
                "kind": "device_offline",
                "subject_type": key.type,
                "subject_id": key.id,
                "subject_name": key.id,
                "description": "down",
                "dedup_key": None,
                "opened_at": saved_at,
                "updated_at": saved_at,
                "resolved_at": saved_at + timedelta(seconds=5) if resolved else None,
            }
        )
    conn.execute(insert(schema.tickets), rows)
    now = Now(0.0, saved_at)
    states.save(
        conn,
        [
            states.StateRow(
                key=key,
                name=key.id,
                health="down",
                flapping=False,
                since=saved_at,
                ticket_seq=seq,
                last_result=None,
                state=dump(adopt_open_ticket(initial(key), seq, "device_offline"), now),
                updated_at=saved_at,
            )
            for seq, key in enumerate(keys, start=1)
        ],
    )


async def test_restoring_50000_subjects_with_open_tickets_takes_a_few_bulk_queries(
    tickets: TicketStore, database: Database
) -> None:
    keys = [SubjectKey("acme", "device", f"dev-{i:05d}") for i in range(SUBJECTS)]
    saved_at = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    await tickets.writer.run(lambda conn: seed(conn, keys, saved_at))
    clocks = Clocks(mono=50.0, wall=saved_at + timedelta(minutes=3))
    monitor = HealthMonitor(tickets, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    for key in keys:
        monitor.configure(key, key.id, Windows())
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(database.read.sync_engine, "before_cursor_execute", count)
    try:
        await monitor.restore()
    finally:
        event.remove(database.read.sync_engine, "before_cursor_execute", count)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 5, selects  # saved state, open tickets, resolved times, cursor
    subjects = monitor.subjects()
    for seq, key in enumerate(keys, start=1):
        state = subjects[key].state
        assert state.health is SubjectHealth.UNKNOWN
        assert state.ticket is not None
        assert state.ticket.seq == seq
        assert state.ticket.open is (seq > RESOLVED_BY_PERSON)
    resolved = subjects[keys[0]].state.ticket
    assert resolved is not None
    assert resolved.resolved_by_person
    assert resolved.resolved_at is not None
    assert resolved.resolved_at.wall == saved_at + timedelta(seconds=5)
