"""Opening many monitor tickets in one operation writes exactly what opening them one by one
writes: the same tickets, timeline events and trigger rows, gap-free sequences per org."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.test_store import monitor_open, snapshot, workflow_open
from tocsin.db import migrate
from tocsin.db.engine import open_database
from tocsin.tickets.store import TicketStore

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
