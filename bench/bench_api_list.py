"""Benchmark: GET /api/v1/orgs/{org}/tickets latency as one org's table grows, and server memory.

The script fills a fresh SQLite store (the store's schema, through its write engine, executemany)
with tickets in one org - by default 90% resolved, 7% open, 3% in_progress, at random - and runs
the real API (tocsin.api.app.make_app, aiohttp AppRunner/TCPSite on 127.0.0.1, port 0) in a
separate process: the server and this client then each have a core of their own instead of
sharing one event loop, and the server's memory is its own to measure.

At each table size (--sizes, default 10k, 50k, 100k; the table is topped up between sizes while
the server runs) it sends --requests sequential requests (after --warmup untimed ones) over one
keep-alive connection to each of:

  list, no filter          /api/v1/orgs/bench/tickets?limit=50
  list, state=open         /api/v1/orgs/bench/tickets?state=open&limit=50
  list, state=resolved     /api/v1/orgs/bench/tickets?state=resolved&limit=50
  baseline json_response   a trivial handler in the same server: web.json_response of 50 ticket
                           dicts built once (same shape and size as a page of the listing)
  baseline bytes           the same body pre-encoded, so only aiohttp's own cost remains

and reports p50/p95/p99 in ms, then the server's VmRSS (from /proc/<pid>/status).

Targets (exit status 1 if missed): p95 < --target-p95-ms (20) for the three listings at the
largest size; VmRSS growth between the first and the last size < --target-rss-mb (20).

--postgresql runs the same on PostgreSQL instead: a durable throwaway cluster made as the tests
make theirs (tests/pg.py: Debian's initdb, a free loopback port), the table ANALYZEd after each
fill as autovacuum would soon; the query plans are SQLite's only.

Run: .venv/bin/python bench/bench_api_list.py [--sizes 10000,50000,100000] [--requests 500]
     [--postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import event, insert, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tocsin.api.app import make_app
from tocsin.config import parse
from tocsin.db import migrate, schema
from tocsin.db.engine import Database, open_database
from tocsin.tickets.model import Kind, Source, State, Subject, SubjectType, Ticket
from tocsin.tickets.store import TicketFilter, TicketStore

ORG = "bench"
TOKEN = "bench-read-token"
BASE_URL = "http://tocsin.bench"
START = datetime(2025, 1, 1, tzinfo=UTC)

QUERIES: list[tuple[str, str]] = [
    ("list, no filter", f"/api/v1/orgs/{ORG}/tickets?limit=50"),
    ("list, state=open", f"/api/v1/orgs/{ORG}/tickets?state=open&limit=50"),
    ("list, state=resolved", f"/api/v1/orgs/{ORG}/tickets?state=resolved&limit=50"),
    ("baseline json_response", "/bench/json"),
    ("baseline bytes", "/bench/bytes"),
]
LISTINGS = {label for label, path in QUERIES if path.startswith("/api/")}


def store_url(store: Path | str) -> str:
    """A SQLite file's store URL; a URL as it is."""
    return store if isinstance(store, str) else f"sqlite+aiosqlite:///{store}"


def config_text(store: Path | str, scope: str = "read", token: str = TOKEN) -> str:
    """One org with one token (`bench-<scope>`), the store at `store` (a SQLite file or URL)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f"""
[server]
listen = "127.0.0.1:0"
public_url = "{BASE_URL}"
[store]
url = "{store_url(store)}"
[[orgs]]
slug = "{ORG}"
name = "Bench Inc"
[[orgs.tokens]]
name = "bench-{scope}"
scope = "{scope}"
token_sha256 = "{digest}"
"""


def load_average() -> str:
    """The 1-minute load average and the CPU count: other processes skew every figure here."""
    return f"load average {Path('/proc/loadavg').read_text().split()[0]} on {os.cpu_count()} CPUs"


# -- the table ----------------------------------------------------------------------------------


def ticket_row(seq: int, rng: random.Random, mix: tuple[float, float, float]) -> dict[str, Any]:
    state = rng.choices((State.RESOLVED, State.OPEN, State.IN_PROGRESS), weights=mix)[0]
    roll = rng.random()
    if roll < 0.7:
        source, kind, subject_type = Source.HEALTH_MONITOR, Kind.DEVICE_OFFLINE, SubjectType.DEVICE
    elif roll < 0.9:
        source, kind, subject_type = Source.WORKFLOW, "bms_alarm", SubjectType.INTEGRATION
    else:
        source, kind, subject_type = Source.USER, Kind.USER_REPORT, SubjectType.SPACE
    subject_id = f"{subject_type.value}-{rng.randrange(2_000)}"
    opened = START + timedelta(seconds=30 * seq)
    resolved = (
        opened + timedelta(minutes=rng.randrange(5, 600)) if state is State.RESOLVED else None
    )
    return {
        "org": ORG,
        "seq": seq,
        "state": state.value,
        "source": source.value,
        "kind": str(kind),
        "subject_type": subject_type.value,
        "subject_id": subject_id,
        "subject_name": f"{subject_type.value.title()} {subject_id}",
        "description": f"{subject_id} stopped answering; last seen {rng.randrange(1, 60)} min "
        "before the probe gave up. Checked twice from the monitor.",
        "dedup_key": f"wf-{seq}" if source is Source.WORKFLOW else None,
        "opened_at": opened,
        "updated_at": resolved or opened,
        "resolved_at": resolved,
    }


def fill(db: Database, start: int, stop: int, mix: tuple[float, float, float]) -> float:
    """Insert tickets seq start+1..stop (one executemany per 10,000); return seconds taken."""
    rng = random.Random(start)
    began = time.perf_counter()
    chunk = 10_000
    for first in range(start + 1, stop + 1, chunk):
        rows = [ticket_row(seq, rng, mix) for seq in range(first, min(first + chunk, stop + 1))]
        postgres = db.write.dialect.name == "postgresql"
        with db.write.begin() as conn:
            conn.execute(insert(schema.tickets), rows)
            dialect_insert = postgresql_insert if postgres else sqlite_insert
            upsert = dialect_insert(schema.org_sequences).values(org=ORG, last_seq=stop)
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[schema.org_sequences.c.org], set_={"last_seq": stop}
                )
            )
    if db.write.dialect.name == "postgresql":
        with db.write.begin() as conn:  # the planner's statistics, as autovacuum would soon
            conn.execute(text("ANALYZE tickets"))
        return time.perf_counter() - began
    # Fold the WAL back into the file, as autocheckpoint would soon; outside any transaction.
    with contextlib.closing(sqlite3.connect(str(db.write.url.database))) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - began


def query_plans(db_path: Path) -> list[tuple[str, str]]:
    """EXPLAIN QUERY PLAN of the exact SQL TicketStore.list_tickets sends for the 3 listings."""
    captured: list[tuple[str, Any]] = []

    async def capture() -> None:
        db = open_database(f"sqlite+aiosqlite:///{db_path}")

        @event.listens_for(db.read.sync_engine, "before_cursor_execute")
        def _keep(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and "tickets" in statement:
                captured.append((statement, params))

        store = TicketStore(db)
        try:
            for states in ((), (State.OPEN,), (State.RESOLVED,)):
                await store.list_tickets(ORG, TicketFilter(states=states), limit=50)
        finally:
            await db.dispose()

    asyncio.run(capture())
    plans = []
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for (label, _), (statement, params) in zip(QUERIES, captured, strict=False):
            rows = conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
            plans.append((label, "; ".join(str(r[-1]) for r in rows)))
    return plans


# -- the server (a child process) ---------------------------------------------------------------


def sample_body() -> dict[str, Any]:
    """50 tickets as the listing spells them: the baseline's body, built once."""
    rng = random.Random(7)
    tickets = []
    for seq in range(100_000, 99_950, -1):
        row = ticket_row(seq, rng, (90, 7, 3))
        ticket = Ticket(
            id=seq,
            org=row["org"],
            seq=seq,
            state=State(row["state"]),
            source=Source(row["source"]),
            kind=row["kind"],
            subject=Subject(
                SubjectType(row["subject_type"]), row["subject_id"], row["subject_name"]
            ),
            description=row["description"],
            dedup_key=row["dedup_key"],
            opened_at=row["opened_at"],
            updated_at=row["updated_at"],
            resolved_at=row["resolved_at"],
        )
        tickets.append(ticket.to_json(BASE_URL))
    return {"tickets": tickets, "next_cursor": "c2VxOjk5OTUw"}


async def serve(where: Path | str) -> None:
    settings = parse(config_text(where))
    db = open_database(settings.store_url)
    store = TicketStore(db)
    store.start()
    body = sample_body()
    encoded = json.dumps(body).encode()

    async def baseline_json(request: web.Request) -> web.Response:
        return web.json_response(body)

    async def baseline_bytes(request: web.Request) -> web.Response:
        return web.Response(body=encoded, content_type="application/json")

    app = make_app(settings, store)
    app.router.add_get("/bench/json", baseline_json)
    app.router.add_get("/bench/bytes", baseline_bytes)
    await serve_until_stopped(app, store, db)


async def serve_until_stopped(app: web.Application, store: TicketStore, db: Database) -> None:
    """Serve `app` on a free 127.0.0.1 port, print "READY <port>" for the parent, and run
    until SIGTERM or SIGINT; then close the app, the store and the database."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await store.close()
        await db.dispose()


# -- the client ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


async def measure(
    base: str, path: str, requests: int, warmup: int, session: aiohttp.ClientSession
) -> tuple[list[float], int]:
    """Latencies (ms) of `requests` sequential GETs, status and body read included."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timings: list[float] = []
    size = 0
    for i in range(warmup + requests):
        started = time.perf_counter()
        async with session.get(base + path, headers=headers) as response:
            data = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {data[:200]!r}")
        if i == 0:
            page = json.loads(data)
            if len(page["tickets"]) != 50:
                raise RuntimeError(f"GET {path}: {len(page['tickets'])} tickets, expected 50")
            wanted = path.partition("state=")[2].partition("&")[0]
            if wanted and any(t["state"] != wanted for t in page["tickets"]):
                raise RuntimeError(f"GET {path}: a ticket in another state")
        size = len(data)
        if i >= warmup:
            timings.append(elapsed * 1000)
    return timings, size


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def client(base: str, requests: int, warmup: int) -> dict[str, tuple[list[float], int]]:
    results = {}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for label, path in QUERIES:
            results[label] = await measure(base, path, requests, warmup, session)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,50000,100000", help="table sizes, comma-separated"
    )
    parser.add_argument("--requests", type=int, default=500, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests per query first")
    parser.add_argument(
        "--mix", default="90,7,3", help="percent resolved,open,in_progress (default 90,7,3)"
    )
    parser.add_argument("--target-p95-ms", type=float, default=20.0)
    parser.add_argument("--target-rss-mb", type=float, default=20.0)
    parser.add_argument("--dir", default=None, help="parent of the temp folder (default: TMPDIR)")
    parser.add_argument("--postgresql", action="store_true", help="a PostgreSQL store instead")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    mix_parts = tuple(float(x) for x in args.mix.split(","))
    if len(mix_parts) != 3:
        parser.error("--mix needs three numbers")
    args.mix = (mix_parts[0], mix_parts[1], mix_parts[2])
    if args.serve:
        served = args.serve if args.serve.startswith("postgresql") else Path(args.serve)
        asyncio.run(serve(served))
        return 0
    postgres = None
    if args.postgresql:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pg import PostgresServer

        postgres = PostgresServer(durable=True)
        postgres.start()
    try:
        return run(args, postgres)
    finally:
        if postgres is not None:
            postgres.stop()


def run(args: argparse.Namespace, postgres: Any) -> int:
    """Fill, serve and measure; `postgres`: the PostgreSQL server to use, or None (SQLite)."""
    sizes = sorted(int(s) for s in args.sizes.split(","))
    mix = args.mix
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-", dir=args.dir) as tmp:
        db_path = Path(tmp) / "tocsin.db"
        store: Path | str = db_path
        if postgres is not None:
            store = postgres.url(postgres.new_database(template=None))
        db = open_database(store_url(store))
        migrate.upgrade_sync(db)
        seconds = fill(db, 0, sizes[0], mix)
        print(f"{load_average()} at the start", flush=True)
        where = "PostgreSQL" if postgres is not None else db_path
        print(f"filled {sizes[0]:,} tickets in {seconds:.1f} s ({where})", flush=True)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(store)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"the server did not start: {line!r}")
            base = f"http://127.0.0.1:{int(line.split()[1])}"
            print(
                f"server pid {server.pid} on {base}; {args.requests} requests per query", flush=True
            )
            rss: list[tuple[int, dict[str, int]]] = []
            size = sizes[0]
            for target_size in sizes:
                if target_size > size:
                    seconds = fill(db, size, target_size, mix)
                    print(f"\nfilled to {target_size:,} tickets (+{seconds:.1f} s)", flush=True)
                    size = target_size
                results = asyncio.run(client(base, args.requests, args.warmup))
                memory = rss_kib(server.pid)
                rss.append((size, memory))
                print(f"\n  {size:,} tickets, {args.requests} sequential GETs each")
                print(
                    f"  {'':<26}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'body B':>9}"
                )
                baseline = statistics.median(results["baseline json_response"][0])
                for label, (timings, body_size) in results.items():
                    p95 = pct(timings, 95)
                    print(
                        f"  {label:<26}{statistics.median(timings):>9.2f}{p95:>9.2f}"
                        f"{pct(timings, 99):>9.2f}{max(timings):>9.2f}{body_size:>9,}"
                        + (
                            f"   p50 {statistics.median(timings) / baseline:.1f}x baseline"
                            if label in LISTINGS
                            else ""
                        )
                    )
                    if target_size == sizes[-1] and label in LISTINGS and p95 >= args.target_p95_ms:
                        failures.append(f"{label}: p95 {p95:.2f} ms >= {args.target_p95_ms} ms")
                print(
                    f"  server VmRSS {memory['VmRSS'] / 1024:.1f} MiB "
                    f"(peak VmHWM {memory['VmHWM'] / 1024:.1f} MiB)"
                )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        plans = query_plans(db_path) if postgres is None else [("(all)", "SQLite's only")]
        db.write.dispose()
        asyncio.run(db.read.dispose())

    print("\n  query plans (EXPLAIN QUERY PLAN of the SQL list_tickets sends):")
    for label, plan in plans:
        print(f"    {label:<22} {plan}")
    print(f"\n  {load_average()} at the end")
    if float(Path("/proc/loadavg").read_text().split()[0]) > (os.cpu_count() or 1):
        print(
            "  WARNING: more runnable processes than CPUs: other work competed with the server "
            "and the client, so the latencies (tails most) are inflated; rerun when quieter"
        )
    growth = (rss[-1][1]["VmRSS"] - rss[0][1]["VmRSS"]) / 1024
    print("\n  server memory after listing:")
    for size, memory in rss:
        print(f"    {size:>9,} tickets  VmRSS {memory['VmRSS'] / 1024:7.1f} MiB")
    print(f"    growth {rss[0][0]:,} -> {rss[-1][0]:,}: {growth:+.1f} MiB")
    if growth >= args.target_rss_mb:
        failures.append(f"VmRSS growth {growth:.1f} MiB >= {args.target_rss_mb} MiB")
    print(
        f"\n  targets: listing p95 < {args.target_p95_ms} ms at {sizes[-1]:,} tickets; "
        f"VmRSS growth < {args.target_rss_mb} MiB"
    )
    for failure in failures:
        print(f"  FAIL {failure}")
    print("  PASS" if not failures else f"  FAILED ({len(failures)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
