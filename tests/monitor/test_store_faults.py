"""The monitor when the store refuses writes: it keeps deciding, keeps its decisions (stamped
with when they were decided) and writes them in order once the store takes writes again; the
store's health says so once, reminds, and says when writes resume. Decisions are written in
batches. Against a real SQLite store that really refuses (PRAGMA query_only on the writer's
connection: SQLite answers "attempt to write a readonly database")."""

from __future__ import annotations

import errno
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import event

from tests.monitor.test_runtime import CAM, WINDOWS, Clocks, down, monitor_tickets, up
from tocsin.db.engine import Database
from tocsin.db.health import Fault, StoreHealth, classify
from tocsin.db.writer import StoreUnavailable
from tocsin.monitor import states
from tocsin.monitor.applier import DecisionApplier, Pending
from tocsin.monitor.runtime import HealthMonitor
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.model import EventType, State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import Comment, Reason


async def refuse_writes(store: TicketStore, refuse: bool = True) -> None:
    """Make SQLite refuse (or take again) every write on the store's one writer connection
    (the writer is idle between batches, so the pool hands the test that same connection)."""
    raw = store.database.write.raw_connection()
    try:
        raw.driver_connection.execute(f"PRAGMA query_only = {1 if refuse else 0}")
    finally:
        raw.close()


async def new_monitor(store: TicketStore, clocks: Clocks, *keys: SubjectKey) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    for key in keys or (CAM,):
        monitor.configure(key, f"Camera {key.id}", WINDOWS)
    await monitor.restore()
    return monitor


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_it_keeps_a_decision_through_a_store_outage_and_stamps_it_when_it_was_decided(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, up())
    await refuse_writes(tickets)
    with structlog.testing.capture_logs() as logs:
        await monitor.handle_observation(CAM, down())
        clocks.advance(121)
        decided_at = clocks.wall
        monitor.expire_windows()  # the debounce is over: open, but the store refuses
        await monitor.applier.drain()
        assert await monitor_tickets(tickets) == []
        assert len(monitor.applier) == 1
        clocks.advance(30)
        await monitor.handle_observation(CAM, down("HTTP 500 in 3 ms"))  # still watching
        assert tickets.health.fault is not None
        assert tickets.health.fault.fault is Fault.READ_ONLY
        await refuse_writes(tickets, refuse=False)
        clocks.advance(30)
        await monitor.applier.drain()
    assert await monitor_tickets(tickets) == [1]
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.OPEN
    assert ticket.opened_at == decided_at  # when it was decided, not when the store took it
    assert timeline[0].type is EventType.OPENED
    assert timeline[0].at == decided_at
    assert len(events(logs, "store writes failing")) == 1
    assert len(events(logs, "store writes resumed")) == 1
    assert tickets.health.fault is None
    assert monitor.subjects()[CAM].state.ticket_seq == 1  # the seq came back to the tracker


async def test_a_resolve_decided_during_the_outage_follows_its_open_in_order(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await refuse_writes(tickets)
    await monitor.handle_observation(CAM, down())
    clocks.advance(121)
    monitor.expire_windows()
    await monitor.handle_observation(CAM, up())
    clocks.advance(61)
    monitor.expire_windows()  # the recovery window is over; the resolve waits for the seq
    await monitor.applier.drain()
    assert await monitor_tickets(tickets) == []
    await refuse_writes(tickets, refuse=False)
    await monitor.applier.drain()
    await monitor.tick()
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.RESOLVED
    assert [e.type for e in timeline] == [EventType.OPENED, EventType.RESOLVED]


async def test_a_burst_of_decisions_is_committed_in_few_transactions(
    tickets: TicketStore, clocks: Clocks, database: Database
) -> None:
    keys = [SubjectKey("acme", "device", f"d{i}") for i in range(600)]
    monitor = await new_monitor(tickets, clocks, *keys)
    for key in keys:
        monitor.observe(key, down())
    clocks.advance(121)
    commits: list[int] = []

    def count(conn: object) -> None:
        commits.append(1)

    event.listen(database.write, "commit", count)
    try:
        monitor.expire_windows()  # 600 opens decided at once
        await monitor.applier.drain()
    finally:
        event.remove(database.write, "commit", count)
    assert await tickets.count("acme") == 600
    assert len(commits) <= 4  # 600 opens / 256 per batch, not 600 transactions
    assert all(monitor.subjects()[key].state.ticket_seq is not None for key in keys)


async def test_a_failed_state_save_is_tried_again_later(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, down())
    await refuse_writes(tickets)
    with pytest.raises(StoreUnavailable):
        await monitor.save(force=True)
    assert monitor.subjects()[CAM].dirty
    await refuse_writes(tickets, refuse=False)
    await monitor.save(force=True)
    rows = await states.load(tickets.database.read)
    assert [row.health for row in rows] == ["failing"]


async def test_a_subjects_line_stays_bounded_while_the_store_is_down(
    tickets: TicketStore,
) -> None:
    applied: list[Pending] = []
    applier = DecisionApplier(tickets, lambda p, o, s: applied.append(p), max_per_subject=4)
    await refuse_writes(tickets)
    for i in range(50):
        comment = Comment(1, f"note {i}", Reason.DETAIL_CHANGED)
        applier.submit(Pending(CAM, "cam", comment, datetime.now(UTC)))
    assert len(applier) == 4
    assert applier.coalesced == 46


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), Fault.DISK_FULL),
        (sqlite3.OperationalError("database or disk is full"), Fault.DISK_FULL),
        (sqlite3.OperationalError("database is locked"), Fault.LOCKED),
        (sqlite3.OperationalError("attempt to write a readonly database"), Fault.READ_ONLY),
        (sqlite3.OperationalError("disk I/O error"), Fault.IO_ERROR),
    ],
)
def test_it_names_the_cause_of_a_store_failure(
    error: Exception, fault: Fault, tmp_path: Path
) -> None:
    path = tmp_path / "tocsin.db"
    path.touch()
    found = classify(error, str(path), waited=12.0)
    assert found.fault is fault
    assert str(path) in found.cause
    if fault is Fault.DISK_FULL:
        assert found.cause.startswith(f"disk full at {path}: free space")
    if fault is Fault.LOCKED:
        assert "locked by another process for 12 s" in found.cause


def test_a_missing_database_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tocsin.db"
    found = classify(sqlite3.OperationalError("no such table: tickets"), str(path))
    assert found.fault is Fault.MISSING
    path.touch()
    health = StoreHealth(str(path))
    path.unlink()
    with structlog.testing.capture_logs() as logs:
        health.check_file()
        health.check_file()
    assert health.fault is not None
    assert health.fault.fault is Fault.MISSING
    assert len(events(logs, "store writes failing")) == 1


def test_it_says_a_failure_once_then_reminds_each_minute_then_says_it_is_over() -> None:
    clock = [0.0]
    health = StoreHealth("/data/tocsin.db", monotonic=lambda: clock[0])
    full = classify(OSError(errno.ENOSPC, "full"), "/data/tocsin.db")
    with structlog.testing.capture_logs() as logs:
        for _ in range(30):
            health.failed(full)
            clock[0] += 1
        health.failed(full)  # 30 s in: no reminder yet
        clock[0] += 31
        health.failed(full)  # 61 s in: one reminder
        health.failed(full)
        health.succeeded()
        health.succeeded()
    assert len(events(logs, "store writes failing")) == 1
    reminders = events(logs, "store writes still failing")
    assert len(reminders) == 1
    assert reminders[0]["failed_writes"] == 32
    resumed = events(logs, "store writes resumed")
    assert len(resumed) == 1
    assert resumed[0]["failed_writes"] == 33
    assert health.failures[Fault.DISK_FULL] == 33
    assert health.cause is None
    assert timedelta(seconds=0) < timedelta(seconds=float(str(resumed[0]["outage_seconds"])))


def test_a_helper_processs_store_counts_failures_but_leaves_saying_so_to_the_daemon() -> None:
    """The delivery process has its own store; the daemon's says when writes fail, once."""
    clock = [0.0]
    health = StoreHealth("/data/tocsin.db", monotonic=lambda: clock[0], announce=False)
    edges: list[str | None] = []
    health.on_change = lambda: edges.append(health.cause)
    full = classify(OSError(errno.ENOSPC, "full"), "/data/tocsin.db")
    with structlog.testing.capture_logs() as logs:
        health.failed(full)
        clock[0] += 61
        health.failed(full)
        health.succeeded()
    assert logs == []
    assert health.failures[Fault.DISK_FULL] == 2
    assert edges == [full.cause, None]
    assert health.cause is None
