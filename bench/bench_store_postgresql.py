"""Benchmark: ticket opens through TicketStore.open on PostgreSQL, beside a bare psycopg loop.

Issue "Beyond one box". One durable PostgreSQL server (Debian's, made with initdb under a
temporary folder on a free loopback port by tests/pg.py: fsync and synchronous_commit on, as
PostgreSQL ships), a fresh database per run, the store's own schema (alembic head).

1. store - TicketStore.open from --concurrency asyncio callers, --opens in all: the org's
           sequence upsert, the ticket, its timeline event and the trigger row, through the
           group-commit writer thread (psycopg 3), one transaction per batch (which takes the
           trigger-order lock once), a SAVEPOINT per open.
2. bare  - psycopg 3 alone, one connection, the same statements per open, as many opens per
           transaction as the store's writer put in its batches in the same repetition (its
           mean), with a SAVEPOINT per open as the writer does; and one open per transaction.
           Each transaction takes the trigger-order lock first, as the writer's do.

The median of --reps repetitions; target: the store at least --target (0.5) of the bare
batched loop. Exit status 1 if it is missed.

Run from the repository root: .venv/bin/python bench/bench_store_postgresql.py [--opens 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg: the server

from tests.pg import PostgresServer

from bench_store_open import ORG, WriterProbe, load_average, run_store
from tocsin.db import migrate
from tocsin.db.engine import open_database
from tocsin.db.writer import TRIGGER_ORDER_LOCK
from tocsin.tickets.model import rfc3339

NEXT_SEQ = (
    "INSERT INTO org_sequences (org, last_seq) VALUES (%s, 1) "
    "ON CONFLICT (org) DO UPDATE SET last_seq = org_sequences.last_seq + 1 RETURNING last_seq"
)
INSERT_TICKET = (
    "INSERT INTO tickets (org, seq, state, source, kind, subject_type, subject_id, subject_name,"
    " description, dedup_key, opened_at, updated_at, resolved_at) VALUES (%s, %s, 'open',"
    " 'health_monitor', 'device_offline', 'device', %s, %s, %s, NULL, %s, %s, NULL) RETURNING id"
)
INSERT_EVENT = (
    "INSERT INTO timeline_events (ticket_id, type, at, actor_type, actor_name, payload)"
    " VALUES (%s, 'opened', %s, 'health_monitor', 'health monitor', '{}') RETURNING id"
)
INSERT_TRIGGER = (
    "INSERT INTO triggers (org, ticket_id, event_id, type, created_at, data)"
    " VALUES (%s, %s, %s, 'ticket.opened', %s, %s)"
)


def bare_open(conn: psycopg.Connection, i: int) -> None:
    now = datetime.now(UTC)
    naive = now.replace(tzinfo=None)
    subject_id, name = f"dev-{i}", f"Device {i}"
    description = f"Device dev-{i} stopped answering SNMP GET for 2m"
    row = conn.execute(NEXT_SEQ, (ORG,)).fetchone()
    assert row is not None
    seq = row[0]
    row = conn.execute(
        INSERT_TICKET, (ORG, seq, subject_id, name, description, naive, naive)
    ).fetchone()
    assert row is not None
    ticket_id = row[0]
    row = conn.execute(INSERT_EVENT, (ticket_id, naive)).fetchone()
    assert row is not None
    event_id = row[0]
    at = rfc3339(now)
    data = {
        "org": ORG,
        "ticket": {"org": ORG, "seq": seq, "state": "open", "subject": {"id": subject_id}},
        "event": {"id": event_id, "type": "opened", "at": at},
        "description": description,
    }
    conn.execute(INSERT_TRIGGER, (ORG, ticket_id, event_id, naive, json.dumps(data)))


def run_bare(dsn: str, opens: int, batch: int) -> float:
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        done = 0
        while done < opens:
            n = min(batch, opens - done)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (TRIGGER_ORDER_LOCK,))
                for k in range(n):
                    if batch > 1:
                        conn.execute("SAVEPOINT op")
                    bare_open(conn, done + k)
                    if batch > 1:
                        conn.execute("RELEASE SAVEPOINT op")
            done += n
        elapsed = time.perf_counter() - started
        row = conn.execute("SELECT count(*) FROM tickets").fetchone()
    if row is None or row[0] != opens:
        raise RuntimeError(f"bare loop: expected {opens} tickets, found {row}")
    return opens / elapsed


def fresh(server: PostgresServer) -> tuple[str, str]:
    """A new database with the store's schema: its store URL and its psycopg DSN."""
    name = server.new_database(template=None)
    url = server.url(name)
    db = open_database(url)
    try:
        migrate.upgrade_sync(db)
    finally:
        db.write.dispose()
        asyncio.run(db.read.dispose())
    dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname={name}"
    return url, dsn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--opens", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.5, help="store / bare batched (0.5)")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench_store_postgresql at {stamp}, {load_average()}", flush=True)
    probe = WriterProbe()
    probe.install()
    server = PostgresServer(durable=True)
    results: dict[str, list[float]] = {"store": [], "bare batched": [], "bare 1 per txn": []}
    batches: list[int] = []
    try:
        server.start()
        for _ in range(args.reps):
            probe.reset()
            url, _ = fresh(server)
            results["store"].append(
                asyncio.run(run_store(url, args.opens, args.concurrency, dedup=False))
            )
            batch = max(1, round(statistics.mean(probe.sizes)))
            batches.append(batch)
            results["bare batched"].append(run_bare(fresh(server)[1], args.opens, batch))
            results["bare 1 per txn"].append(run_bare(fresh(server)[1], args.opens, 1))
    finally:
        probe.uninstall()
        server.stop()
    print(f"  {args.opens:,} opens, {args.concurrency} callers; the writer's mean batch {batches}")
    for label, values in results.items():
        cells = " ".join(f"{v:8,.0f}" for v in values)
        print(f"  {label:<16} {cells}  median {statistics.median(values):8,.0f} opens/s")
    ratio = statistics.median(results["store"]) / statistics.median(results["bare batched"])
    verdict = "PASS" if ratio >= args.target else "FAIL"
    print(f"  store / bare batched: {ratio:.2f} (target >= {args.target}) {verdict}")
    print(f"  {load_average()} at the end")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
