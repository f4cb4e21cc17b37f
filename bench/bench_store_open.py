"""Benchmark: opening tickets through TicketStore.open from many concurrent asyncio callers.

Each repetition, on fresh SQLite files in one temporary folder (same file system for all):

1. store   - TicketStore.open from --concurrency asyncio callers, --opens in all. The store sets
             WAL + synchronous=FULL; each open writes the org_sequences upsert, the ticket, its
             timeline event and its trigger row, through the group-commit writer thread.
2. bare    - stdlib sqlite3, same pragmas (WAL, synchronous=FULL, busy_timeout, foreign_keys), the
             same four statements per open, one BEGIN IMMEDIATE ... COMMIT per open.
3. batched - the bare loop, N opens per transaction (N = --batch, default: the mean batch size
             the store's writer used in the same repetition).
4. batched+sp - as 3, each open inside its own SAVEPOINT, as the store's writer does.

--dedup-key gives every open its own dedup_key, so the store (and the bare loops) first look
for an unresolved ticket with that key, as for a workflow's or the monitor's own keyed open.

The median of --reps repetitions is reported; exit status 1 if the store's median is under
--target opens/s. The writer's batch sizes are observed by wrapping GroupWriter._commit here
(src is not modified). --profile prints a cProfile of the writer thread's _commit.

Run: .venv/bin/python bench/bench_store_open.py [--opens 10000] [--concurrency 50] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tocsin.db import migrate
from tocsin.db.engine import BUSY_TIMEOUT_MS, open_database
from tocsin.db.writer import GroupWriter
from tocsin.tickets.model import Actor, Kind, Source, Subject, SubjectType, rfc3339
from tocsin.tickets.store import TicketStore
from tocsin.tickets.writes import OpenOutcome, OpenRequest

ORG = "bench"
REFERENCE_TXN_PER_S = 5_900  # peers-and-libraries.md: bare sqlite3, WAL + FULL, 2-insert txn


def load_average() -> str:
    """The 1-minute load average and the CPU count: other processes skew every figure here."""
    return f"load average {Path('/proc/loadavg').read_text().split()[0]} on {os.cpu_count()} CPUs"


# -- observing the writer without changing it -------------------------------------------------


class WriterProbe:
    """Wraps GroupWriter._commit (in this process only) to record batch sizes and commit times,
    and optionally profile the writer thread."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.seconds: list[float] = []
        self.profile: cProfile.Profile | None = None
        self._original: Callable[..., Any] | None = None

    def install(self) -> None:
        original = GroupWriter._commit
        probe = self

        def _commit(writer: GroupWriter, ops: list[Any]) -> Any:
            started = time.perf_counter()
            if probe.profile is not None:
                probe.profile.enable()
            try:
                return original(writer, ops)
            finally:
                if probe.profile is not None:
                    probe.profile.disable()
                probe.seconds.append(time.perf_counter() - started)
                probe.sizes.append(len(ops))

        self._original = original
        GroupWriter._commit = _commit  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            GroupWriter._commit = self._original  # type: ignore[method-assign]

    def reset(self) -> None:
        self.sizes.clear()
        self.seconds.clear()


# -- 1. the store -------------------------------------------------------------------------------


def open_request(i: int, dedup: bool) -> OpenRequest:
    """A health-monitor ticket; with `dedup`, one carrying its own dedup_key (the store then
    looks for an unresolved ticket with that key first)."""
    return OpenRequest(
        org=ORG,
        source=Source.HEALTH_MONITOR,
        subject=Subject(SubjectType.DEVICE, f"dev-{i}", f"Device {i}"),
        kind=Kind.DEVICE_OFFLINE.value,
        description=f"Device dev-{i} stopped answering SNMP GET for 2m",
        actor=Actor.health_monitor(),
        dedup_key=f"dev-{i}-offline" if dedup else None,
    )


async def run_store(url: str, opens: int, concurrency: int, dedup: bool) -> float:
    """Opens/s through TicketStore.open on the store at `url`; the schema is built before the
    clock starts."""
    db = open_database(url)
    await migrate.upgrade(db)
    store = TicketStore(db)
    store.start()
    per_caller = [
        opens // concurrency + (1 if c < opens % concurrency else 0) for c in range(concurrency)
    ]

    async def caller(c: int, count: int) -> None:
        for k in range(count):
            change = await store.open(open_request(c * 1_000_000 + k, dedup))
            if change.outcome is not OpenOutcome.CREATED:
                raise RuntimeError(f"expected a new ticket, got {change.outcome}")

    try:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for c, count in enumerate(per_caller):
                group.create_task(caller(c, count))
        elapsed = time.perf_counter() - started
        created = await store.count(ORG)
    finally:
        await store.close()
        await db.dispose()
    if created != opens:
        raise RuntimeError(f"expected {opens} tickets, found {created}")
    return opens / elapsed


# -- 2-4. bare sqlite3 --------------------------------------------------------------------------

NEXT_SEQ = (
    "INSERT INTO org_sequences (org, last_seq) VALUES (?, 1) "
    "ON CONFLICT (org) DO UPDATE SET last_seq = org_sequences.last_seq + 1 RETURNING last_seq"
)
INSERT_TICKET = (
    "INSERT INTO tickets (org, seq, state, source, kind, subject_type, subject_id, subject_name, "
    "description, dedup_key, opened_at, updated_at, resolved_at) "
    "VALUES (?, ?, 'open', 'health_monitor', 'device_offline', 'device', ?, ?, ?, ?, ?, ?, NULL) "
    "RETURNING id"
)
BY_DEDUP_KEY = "SELECT * FROM tickets WHERE org = ? AND dedup_key = ? AND state != 'resolved'"
INSERT_EVENT = (
    "INSERT INTO timeline_events (ticket_id, type, at, actor_type, actor_name, payload) "
    "VALUES (?, 'opened', ?, 'health_monitor', 'health monitor', '{}') RETURNING id"
)
INSERT_TRIGGER = (
    "INSERT INTO triggers (org, ticket_id, event_id, type, created_at, data) "
    "VALUES (?, ?, ?, 'ticket.opened', ?, ?)"
)


def bare_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    ):
        conn.execute(pragma)
    return conn


def bare_open(conn: sqlite3.Connection, i: int, dedup: bool) -> None:
    """The same statements TicketStore.open runs for a health-monitor ticket."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite DATETIME spelling
    subject_id, name, description = (
        f"dev-{i}",
        f"Device {i}",
        f"Device dev-{i} stopped answering SNMP GET for 2m",
    )
    dedup_key = f"dev-{i}-offline" if dedup else None
    if dedup_key is not None and conn.execute(BY_DEDUP_KEY, (ORG, dedup_key)).fetchone():
        raise RuntimeError(f"bare loop: {dedup_key} already open")
    (seq,) = conn.execute(NEXT_SEQ, (ORG,)).fetchone()
    (ticket_id,) = conn.execute(
        INSERT_TICKET, (ORG, seq, subject_id, name, description, dedup_key, stamp, stamp)
    ).fetchone()
    (event_id,) = conn.execute(INSERT_EVENT, (ticket_id, stamp)).fetchone()
    at = rfc3339(now)
    data = {
        "org": ORG,
        "ticket": {
            "org": ORG,
            "seq": seq,
            "state": "open",
            "source": "health_monitor",
            "kind": "device_offline",
            "subject": {"type": "device", "id": subject_id, "name": name},
            "description": description,
            "dedup_key": dedup_key,
            "opened_at": at,
            "updated_at": at,
            "resolved_at": None,
        },
        "event": {
            "id": event_id,
            "type": "opened",
            "at": at,
            "actor": {"type": "health_monitor", "name": "health monitor"},
        },
    }
    conn.execute(INSERT_TRIGGER, (ORG, ticket_id, event_id, stamp, json.dumps(data)))


def run_bare(path: Path, opens: int, batch: int, savepoints: bool, dedup: bool) -> float:
    """Opens/s, `batch` opens per BEGIN IMMEDIATE ... COMMIT (batch=1: one per open)."""
    conn = bare_connection(path)
    try:
        started = time.perf_counter()
        done = 0
        while done < opens:
            n = min(batch, opens - done)
            conn.execute("BEGIN IMMEDIATE")
            for k in range(n):
                if savepoints:
                    conn.execute("SAVEPOINT op")
                bare_open(conn, done + k, dedup)
                if savepoints:
                    conn.execute("RELEASE op")
            conn.execute("COMMIT")
            done += n
        elapsed = time.perf_counter() - started
        (count,) = conn.execute("SELECT count(*) FROM tickets").fetchone()
    finally:
        conn.close()
    if count != opens:
        raise RuntimeError(f"bare loop: expected {opens} tickets, found {count}")
    return opens / elapsed


def run_reference(path: Path, txns: int) -> float:
    """Txn/s of the reference shape (peers-and-libraries.md): two small inserts per transaction,
    same pragmas, two tables without secondary indexes. Checks this machine against the note."""
    conn = bare_connection(path)
    try:
        conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT NOT NULL)")
        conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL, y TEXT)")
        started = time.perf_counter()
        for i in range(txns):
            conn.execute("BEGIN IMMEDIATE")
            a_id = conn.execute("INSERT INTO a (x) VALUES (?)", (f"row {i}",)).lastrowid
            conn.execute("INSERT INTO b (a_id, y) VALUES (?, ?)", (a_id, f"child of {i}"))
            conn.execute("COMMIT")
        return txns / (time.perf_counter() - started)
    finally:
        conn.close()


def fresh_schema(path: Path) -> None:
    """The store's own schema (alembic head), so indexes and constraints are the same."""
    db = open_database(f"sqlite+aiosqlite:///{path}")
    try:
        migrate.upgrade_sync(db)
    finally:
        db.write.dispose()
        asyncio.run(db.read.dispose())


# -- report -------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float], unit: str) -> str:
    cells = "".join(f"{v:>10,.0f}" for v in values)
    return f"  {label:<36}{cells}{statistics.median(values):>12,.0f}  {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=10_000, help="opens per run (default 10000)")
    parser.add_argument("--concurrency", type=int, default=50, help="asyncio callers (default 50)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--bare-opens", type=int, default=None, help="opens per bare run (default: --opens)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="opens per transaction in the batched bare loop (default: the writer's mean batch)",
    )
    parser.add_argument(
        "--reference-txns",
        type=int,
        default=5_000,
        help="transactions in the 2-insert reference loop (default 5000)",
    )
    parser.add_argument("--target", type=float, default=1_000.0, help="opens/s (default 1000)")
    parser.add_argument(
        "--dedup-key",
        action="store_true",
        help="give each open its own dedup_key: adds the store's dedup lookup (a SELECT)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the writer thread")
    parser.add_argument("--dir", default=None, help="parent of the temp folder (default: TMPDIR)")
    args = parser.parse_args()
    bare_opens = args.bare_opens or args.opens

    probe = WriterProbe()
    probe.install()
    if args.profile:
        probe.profile = cProfile.Profile()
    results: dict[str, list[float]] = {
        "store": [],
        "bare": [],
        "batched": [],
        "batched_sp": [],
        "reference": [],
    }
    all_sizes: list[int] = []
    commit_seconds: list[float] = []
    batches_used: list[int] = []
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        print(
            f"store open: {args.opens:,} opens from {args.concurrency} concurrent callers, "
            f"bare loops {bare_opens:,} opens, {args.reps} reps, "
            f"{'a dedup_key per open, ' if args.dedup_key else ''}files in {folder}",
            flush=True,
        )
        print(f"  {load_average()} at the start", flush=True)
        for rep in range(args.reps):
            probe.reset()
            results["store"].append(
                asyncio.run(
                    run_store(
                        f"sqlite+aiosqlite:///{folder / f'store-{rep}.db'}",
                        args.opens,
                        args.concurrency,
                        args.dedup_key,
                    )
                )
            )
            all_sizes += probe.sizes
            commit_seconds += probe.seconds
            batch = args.batch or max(1, round(statistics.mean(probe.sizes)))
            batches_used.append(batch)
            for key, n, sp in (
                ("bare", 1, False),
                ("batched", batch, False),
                ("batched_sp", batch, True),
            ):
                path = folder / f"{key}-{rep}.db"
                fresh_schema(path)
                results[key].append(run_bare(path, bare_opens, n, sp, args.dedup_key))
            results["reference"].append(
                run_reference(folder / f"ref-{rep}.db", args.reference_txns)
            )
            print(
                f"  rep {rep + 1}: store {results['store'][-1]:,.0f}/s, "
                f"bare {results['bare'][-1]:,.0f}/s, batched({batch}) "
                f"{results['batched'][-1]:,.0f}/s, +savepoints {results['batched_sp'][-1]:,.0f}/s",
                flush=True,
            )
    probe.uninstall()

    store = statistics.median(results["store"])
    bare = statistics.median(results["bare"])
    batched = statistics.median(results["batched"])
    batched_sp = statistics.median(results["batched_sp"])
    reps = "".join(f"{'rep ' + str(r + 1):>10}" for r in range(args.reps))
    print()
    print(f"  {'':<36}{reps}{'median':>12}")
    print(row("TicketStore.open (store)", results["store"], "opens/s"))
    print(row("bare sqlite3, 1 open per txn", results["bare"], "opens/s (= txn/s)"))
    label = (
        f"bare sqlite3, {batches_used[0]} opens per txn"
        if args.batch
        else "bare, writer-mean opens/txn"
    )
    print(row(label, results["batched"], f"opens/s (N per rep: {batches_used})"))
    print(row("  same + SAVEPOINT per open", results["batched_sp"], "opens/s"))
    print()
    print(row("bare 2-insert txn (reference shape)", results["reference"], "txn/s"))
    print()
    reference = statistics.median(results["reference"])
    print(
        f"  reference (peers-and-libraries.md): bare 2-insert txn, WAL+FULL "
        f"~{REFERENCE_TXN_PER_S:,} txn/s; measured here {reference:,.0f} txn/s"
    )
    if reference < REFERENCE_TXN_PER_S / 2:
        print(
            "  WARNING: the reference loop ran at under half its usual rate: the disk or CPUs "
            "were busy with other work, so every figure here is low; rerun when quieter"
        )
    print(f"  store / bare 1-per-txn   = {store / bare:6.2f}x")
    print(f"  store / bare batched     = {store / batched:6.2f}x")
    print(f"  store / batched+savepoint= {store / batched_sp:6.2f}x")
    if all_sizes:
        sizes = [float(s) for s in all_sizes]
        per_op_ms = [1000 * s / n for s, n in zip(commit_seconds, all_sizes, strict=True)]
        print()
        print(
            f"  writer batches (all reps): {len(all_sizes):,} commits; size mean "
            f"{statistics.mean(sizes):.1f}, median {statistics.median(sizes):.0f}, "
            f"p10 {percentile(sizes, 10):.0f}, p90 {percentile(sizes, 90):.0f}, "
            f"min {min(all_sizes)}, max {max(all_sizes)}"
        )
        print(
            f"  writer _commit time: mean {1000 * statistics.mean(commit_seconds):.1f} ms per "
            f"batch, {statistics.mean(per_op_ms):.3f} ms per open; total "
            f"{sum(commit_seconds):.1f} s over {args.reps} runs"
        )
        wall = sum(args.opens / rate for rate in results["store"])
        print(
            f"  writer thread busy in _commit {100 * sum(commit_seconds) / wall:.0f}% of the "
            f"store runs' wall time ({wall:.1f} s)"
        )
    if probe.profile is not None:
        out = io.StringIO()
        pstats.Stats(probe.profile, stream=out).sort_stats("cumulative").print_stats(30)
        print("\n  cProfile of the writer thread (GroupWriter._commit), by cumulative time:")
        print(out.getvalue())
    print(f"\n  {load_average()} at the end")
    ok = store >= args.target
    verdict = "PASS" if ok else "FAIL"
    print(
        f"\n  target: store median >= {args.target:,.0f} opens/s -> {store:,.0f} opens/s {verdict}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
