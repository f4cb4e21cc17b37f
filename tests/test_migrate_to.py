"""`tocsin db migrate-to URL`: a SQLite store with every kind of row copied into an empty
PostgreSQL database (the session's throwaway server, tests/pg.py), compared row by row by the
test itself, and used afterwards: numbers, ids and the webhook cursor carry on where the SQLite
store stopped. A non-empty target, a target that is not PostgreSQL and an unreachable one are
refused with the target left as it was, and the target's password is never repeated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine, make_url

from tests.conftest import FakeClock, config_text
from tests.pg import PostgresServer
from tocsin.cli import main
from tocsin.config import parse
from tocsin.db import copy_store, migrate, schema
from tocsin.db.copy_store import CopyError, CopyRefused
from tocsin.db.engine import open_database
from tocsin.delivery import outbox
from tocsin.delivery.endpoints import endpoints_from
from tocsin.tickets.model import Actor, ActorType, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

ADA = Actor(ActorType.USER, "ada")
HOOK = """
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/hook"
secret_env = "HOOK_SECRET"
"""
SECRET = "whsec_dGhlIGN1cnJlbnQgc2VjcmV0LCAzMiBieXRlcyBvaw=="


def request(subject_id: str, *, org: str = "acme", **changes: Any) -> OpenRequest:
    values: dict[str, Any] = {
        "org": org,
        "source": Source.HEALTH_MONITOR,
        "subject": Subject(SubjectType.DEVICE, subject_id, f"Device {subject_id}"),
        "kind": "device_offline",
        "description": f"{subject_id} is **down**",
        "actor": Actor.health_monitor(),
    }
    values.update(changes)
    return OpenRequest(**values)


async def fill(store: TicketStore, clock: FakeClock, db_url: str) -> None:
    """Every table gets rows: tickets in every state with timelines and triggers, a batch of
    opens, deliveries (one claimed), endpoint health, subject state, a window, a session."""
    for i in range(30):
        seq = (await store.open(request(f"d{i}", org="acme" if i % 3 else "beta"))).ticket.seq
        org = "acme" if i % 3 else "beta"
        clock.advance(seconds=7)
        if i % 2:
            await store.start_work(org, seq, ADA, comment="on it")
        if i % 5 == 0:
            await store.comment(org, seq, ADA, "a comment with `code` and émoji ✓")
        if i % 4 == 0:
            await store.resolve(org, seq, ADA, comment="fixed")
            if i % 8 == 0:
                await store.reopen(org, seq, ADA, comment="back again")
    workflow = request(
        "door", source=Source.WORKFLOW, dedup_key="door-1", actor=Actor(ActorType.WORKFLOW, "wf")
    )
    await store.open(workflow)
    await store.open_plain([(request(f"s{i}"), clock.now) for i in range(20)])
    settings = parse(config_text(db_url, extra=HOOK), env={"HOOK_SECRET": SECRET})
    endpoints = endpoints_from(settings)
    now = clock.now
    await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops"], now))
    await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))
    slots = {"ops": outbox.Slots(0, 4, timedelta(seconds=30))}
    await store.writer.run(lambda c: outbox.claim(c, slots, 4, now))
    rows: dict[Any, list[dict[str, Any]]] = {
        schema.subject_states: [
            {
                "org": "acme",
                "subject_type": "device",
                "subject_id": "d1",
                "name": "Device d1",
                "health": "down",
                "flapping": False,
                "since": now,
                "ticket_seq": 2,
                "last_result": {"ok": False, "detail": "timeout", "at": now.isoformat()},
                "state": {"health": "down", "history": [1, 0, 0]},
                "updated_at": now,
            }
        ],
        schema.maintenance_windows: [
            {
                "org": "acme",
                "subject_id": "d2",
                "labels": {"floor": "2"},
                "start_at": now,
                "end_at": now + timedelta(hours=2),
                "reason": "filter change",
                "created_at": now,
                "created_by": "ada",
            }
        ],
        schema.web_sessions: [
            {
                "id_sha256": "a" * 64,
                "org": "acme",
                "name": "maria",
                "scope": "write",
                "via": "user",
                "credential": "b" * 64,
                "csrf": "c" * 64,
                "created_at": now,
                "expires_at": now + timedelta(hours=12),
            }
        ],
    }

    def insert_rows(conn: Any) -> None:
        for table, values in rows.items():
            conn.execute(table.insert(), values)

    await store.writer.run(insert_rows)


def sync_engine(url: str) -> Engine:
    parsed = make_url(url)
    driver = "psycopg" if parsed.get_backend_name() == "postgresql" else "pysqlite"
    return create_engine(parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}"))


def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read through the schema's types, in key order."""
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns))
                ]
                for table in schema.metadata.sorted_tables
            }
    finally:
        engine.dispose()


@pytest.fixture
def target(postgres: PostgresServer) -> str:
    return postgres.url(postgres.new_database(template=None))


async def test_every_row_is_copied_and_the_store_carries_on_where_it_stopped(
    store: TicketStore, clock: FakeClock, db_url: str, target: str
) -> None:
    await fill(store, clock, db_url)
    copied = copy_store.migrate_to(db_url, target)

    before, after = contents(db_url), contents(target)
    assert after == before
    counts = {c.table: c.rows for c in copied}
    assert counts == {name: len(rows) for name, rows in before.items()}
    assert all(counts[name] for name in counts), counts  # every table had rows to copy

    database = open_database(target)
    moved = TicketStore(database, clock=clock)
    moved.start()
    try:
        assert await migrate.is_current(database)
        listed = await moved.list_tickets("acme", limit=100)
        original = await store.list_tickets("acme", limit=100)
        assert listed == original
        change = await moved.open(request("new-one"))
        last_acme = max(row[2] for row in before["tickets"] if row[1] == "acme")
        assert change.ticket.seq == last_acme + 1
        assert change.ticket.id == max(row[0] for row in before["tickets"]) + 1
        assert change.event is not None
        assert change.event.id == max(row[0] for row in before["timeline_events"]) + 1
        settings = parse(config_text(target, extra=HOOK), env={"HOOK_SECRET": SECRET})
        fanned = await moved.writer.run(
            lambda c: outbox.fan_out(c, endpoints_from(settings), clock.now)
        )
        assert (fanned.triggers, fanned.deliveries) == (1, 1)  # only the new ticket's
    finally:
        await moved.close()
        await database.dispose()


async def test_a_target_that_holds_tickets_is_refused_and_left_alone(
    store: TicketStore, clock: FakeClock, db_url: str, target: str
) -> None:
    await store.open(request("d1"))
    copy_store.migrate_to(db_url, target)
    await store.open(request("d2"))
    with pytest.raises(CopyRefused, match=r"not empty \(.* has 1 rows\)"):
        copy_store.migrate_to(db_url, target)
    assert len(contents(target)["tickets"]) == 1


async def test_bad_targets_are_refused_without_repeating_the_password(
    store: TicketStore, db_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    with pytest.raises(CopyRefused, match="must be postgresql"):
        copy_store.migrate_to(db_url, f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(CopyRefused, match="not a database URL"):
        copy_store.migrate_to(db_url, "postgresql+asyncpg://ada:hunter2@[::1")
    closed = postgres.port + 1 if postgres.port < 65535 else postgres.port - 1
    with pytest.raises(CopyError) as failed:
        copy_store.migrate_to(db_url, f"postgresql+asyncpg://ada:hunter2@127.0.0.1:{closed}/x")
    assert "hunter2" not in str(failed.value)
    assert "cannot prepare the target" in str(failed.value)


async def test_the_command_copies_and_says_what_to_do_next(
    store: TicketStore, db_url: str, target: str, tmp_path: Path
) -> None:
    await store.open(request("d1"))
    config = tmp_path / "tocsin.toml"
    config.write_text(config_text(db_url), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        main, ["db", "migrate-to", "--config", str(config)], env={"TOCSIN_TARGET_URL": target}
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "every row matches the store" in result.stdout
    assert "tickets" in result.stdout
    again = runner.invoke(main, ["db", "migrate-to", "--config", str(config), target])
    assert again.exit_code == 2
    assert "not empty" in again.stderr
    engine = sync_engine(target)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(schema.tickets)).scalar() == 1
    finally:
        engine.dispose()
