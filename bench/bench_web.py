"""Benchmark: the web pages (Tickets list, ticket detail, the live stream, page weight), each
beside the API's JSON for the same data in the same run.

The script fills a fresh SQLite store (the store's schema, through its write engine,
executemany) with --tickets tickets in one org - by default 90% resolved, 7% open, 3%
in_progress, at random, as bench_api_list.py does - each with its timeline: an `opened` event,
and a `started` (in_progress) or `resolved` (resolved) one, so the list page's "last event"
column and per-state counts read real rows. One ticket (the middle one) instead gets
--timeline-events events: comments with markdown (emphasis, lists, code, links, a table now and
then; each text distinct) and a few transitions (started, resolved, reopened, with comments).

It runs the real app (tocsin.api.app.make_app: the API and the pages, aiohttp AppRunner/TCPSite
on 127.0.0.1, port 0) in a separate process, so the server's CPU time and memory are its own,
and signs in as a browser does: GET /login (the `tocsin_login` cookie and the form's CSRF
field), POST /login with a write token -> 303 and the `tocsin_session` cookie.

1. Latency: --requests sequential GETs (after --warmup untimed ones) over one keep-alive
   connection, the page and its API twin interleaved request by request (so machine noise hits
   both alike), status and whole body read included:

     list page, state=open      /orgs/bench/tickets?state=open          (target p95)
     API, state=open            /api/v1/orgs/bench/tickets?state=open&limit=50
     list page, all             /orgs/bench/tickets
     API, all                   /api/v1/orgs/bench/tickets?limit=50
     list page, state=resolved  /orgs/bench/tickets?state=resolved
     API, state=resolved        /api/v1/orgs/bench/tickets?state=resolved&limit=50
     detail page (N events)     /orgs/bench/tickets/{seq}                (target p95)
     API detail (N events)      /api/v1/orgs/bench/tickets/{seq}
     baseline bytes             a trivial handler in the same server: 20 KB pre-encoded

   p50/p95/p99/max in ms, and the first (cold) request's time: the markdown renderer caches
   rendered texts (lru_cache), so the first view of a long timeline costs more than the rest.
2. Page weight: the bytes of the list page's HTML (first page, 50 rows) plus the CSS and JS it
   links (<link rel=stylesheet>, <script src>), uncompressed as served (gzip size for info).
3. The live stream: the server's CPU time (utime+stime of every thread, /proc/<pid>/stat) over
   --idle-seconds with no stream open (the baseline), then over the same window with
   --sse-clients streams open on the list page's `data-live` URL (each with the session
   cookie) while nothing changes, as % of one core; the whole machine's busy % over each window
   shows what else ran. Then one ticket change through the API (a comment, write token) and how
   many streams got `event: tickets` within 5 s; then, for information, what tocsin.js does on
   that event: every stream's browser GETs its list page again at once (latency, and the time
   from the comment to the last page served).
4. VmRSS of the server after the latency runs, with the streams open and at the end.

Targets (exit status 1 if one is missed): list page state=open p95 < 50 ms and detail page p95
< 50 ms (--target-page-p95-ms); the streams' idle CPU < 10 % of a core (--target-sse-cpu);
every stream gets the event within 5 s; list page + CSS + JS < 150 KB (150,000 bytes,
--target-weight-kb).

Run: .venv/bin/python bench/bench_web.py [--tickets 100000] [--requests 300]
     [--sse-clients 200] [--idle-seconds 30]     (~2 minutes with these defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import insert, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from yarl import URL

from tocsin.api.app import make_app
from tocsin.config import parse
from tocsin.db import migrate, schema
from tocsin.db.engine import Database, open_database
from tocsin.tickets.model import ActorType, EventType, Source, State
from tocsin.tickets.store import TicketStore
from tocsin.web.app import add_pages

# Run as a script from the repository root: bench/ is on sys.path, its sibling imports.
from bench_api_list import config_text as api_list_config  # isort: skip
from bench_api_list import ticket_row as api_list_ticket  # isort: skip
from bench_api_list import load_average, pct, rss_kib, serve_until_stopped  # isort: skip

ORG = "bench"
TOKEN = "bench-write-token"
BASE_URL = "http://tocsin.bench"
START = datetime(2025, 1, 1, tzinfo=UTC)
SESSION_COOKIE = "tocsin_session"
EVENT_WAIT = 5.0  # s: how long every stream has to see the change


def config_text(db_path: Path) -> str:
    """bench_api_list's org, with a write token: the pages' sign-in and a comment need one."""
    return api_list_config(db_path, "write", TOKEN)


# -- the table ----------------------------------------------------------------------------------

ACTORS = {
    Source.HEALTH_MONITOR: (ActorType.HEALTH_MONITOR, "health monitor"),
    Source.WORKFLOW: (ActorType.WORKFLOW, "bms-bridge"),
    Source.USER: (ActorType.USER, "maria"),
}


def ticket_row(seq: int, rng: random.Random, mix: tuple[float, float, float]) -> dict[str, Any]:
    """bench_api_list.py's ticket, with its id (the table is fresh: id = seq), and an
    in_progress one updated when it was started."""
    row = api_list_ticket(seq, rng, mix)
    row["id"] = seq
    if row["state"] == State.IN_PROGRESS.value:
        row["updated_at"] = row["opened_at"] + timedelta(minutes=rng.randrange(1, 120))
    return row


def ticket_events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Its `opened` event, and `started` or `resolved` as its state says."""
    actor_type, actor_name = ACTORS[Source(row["source"])]
    events = [event_row(row["id"], EventType.OPENED, row["opened_at"], actor_type, actor_name)]
    if row["state"] == State.RESOLVED.value:
        events.append(
            event_row(
                row["id"],
                EventType.RESOLVED,
                row["resolved_at"],
                ActorType.HEALTH_MONITOR,
                "health monitor",
            )
        )
    elif row["state"] == State.IN_PROGRESS.value:
        events.append(
            event_row(row["id"], EventType.STARTED, row["updated_at"], ActorType.USER, "maria")
        )
    return events


def event_row(
    ticket_id: int,
    event_type: EventType,
    at: datetime,
    actor_type: ActorType,
    actor_name: str,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "type": event_type.value,
        "at": at,
        "actor_type": actor_type.value,
        "actor_name": actor_name,
        "payload": payload or {},
    }


def comment_text(i: int) -> str:
    """A comment as people write them: plain, emphasis and lists, code, links, a table."""
    shape = i % 6
    if shape == 0:
        return f"Checked the switch port again (round {i}); the link is up but no DHCP lease yet."
    if shape == 1:
        return (
            f"**Update {i}:** swapped the PoE injector.\n\n- port {i % 48} on `sw-riser-2`\n"
            f"- power draw {5 + i % 7}.{i % 10} W\n- next check at 14:{i % 60:02d}"
        )
    if shape == 2:
        return (
            f"Vendor case [#{1000 + i}](https://support.example.com/cases/{1000 + i}) opened; "
            f"they ask for the output of:\n\n```\nping -c 3 10.0.4.{i % 250}\n"
            "3 packets transmitted, 0 received, 100% packet loss\n```"
        )
    if shape == 3:
        return (
            f"Probes at {i % 24:02d}:{i % 60:02d}:\n\n| probe | result |\n|---|---|\n"
            f"| http | timeout after {i % 9 + 1} s |\n| snmp | ok |\n| mqtt | ~~stale~~ ok |"
        )
    if shape == 4:
        return f"_Still_ down after the reboot #{i}. Escalating to the site team."
    return (
        f"Notes from the visit ({i}):\n\n1. cabinet B door open\n2. fan *not* spinning\n"
        f"3. replaced fuse F{i % 12}\n\n> power came back at 09:{i % 60:02d}, the camera did not"
    )


def busy_timeline(ticket_id: int, opened: datetime, count: int) -> tuple[list[dict], str]:
    """`count` events for one ticket: `opened`, a few transitions (each with a comment but the
    starts), and comments between; and the state they leave it in."""
    transitions = {
        count * 10 // 100: (EventType.STARTED, None),
        count * 30 // 100: (EventType.RESOLVED, "Fixed by the PoE swap, it seems."),
        count * 40 // 100: (EventType.REOPENED, "Down again **10 min** later."),
        count * 60 // 100: (EventType.STARTED, None),
        count * 80 // 100: (EventType.RESOLVED, "Replaced the camera; watching it for a day."),
        count * 90 // 100: (EventType.REOPENED, "It dropped off at `03:12` again."),
        count * 92 // 100: (EventType.STARTED, None),
    }
    people = [(ActorType.USER, "maria"), (ActorType.USER, "jon"), (ActorType.WORKFLOW, "ops-bot")]
    events = [event_row(ticket_id, EventType.OPENED, opened, *ACTORS[Source.HEALTH_MONITOR])]
    state = State.OPEN
    for i in range(1, count):
        at = opened + timedelta(minutes=10 * i)
        actor = people[i % len(people)]
        if i in transitions:
            kind, comment = transitions[i]
            events.append(
                event_row(ticket_id, kind, at, *actor, {"comment": comment} if comment else {})
            )
            state = {
                EventType.STARTED: State.IN_PROGRESS,
                EventType.RESOLVED: State.RESOLVED,
                EventType.REOPENED: State.OPEN,
            }[kind]
        else:
            events.append(
                event_row(ticket_id, EventType.COMMENT, at, *actor, {"body": comment_text(i)})
            )
    return events, state.value


def fill(
    db: Database, count: int, mix: tuple[float, float, float], busy_seq: int, busy_events: int
) -> tuple[float, int]:
    """Insert tickets 1..count and their timelines (one executemany each per 10,000 tickets),
    then the busy ticket's long timeline; return (seconds taken, events written)."""
    rng = random.Random(1)
    began = time.perf_counter()
    chunk = 10_000
    written = 0
    busy_row: dict[str, Any] | None = None
    for first in range(1, count + 1, chunk):
        rows = [ticket_row(seq, rng, mix) for seq in range(first, min(first + chunk, count + 1))]
        events = []
        for row in rows:
            if row["seq"] == busy_seq:
                busy_row = row
            else:
                events.extend(ticket_events(row))
        with db.write.begin() as conn:
            conn.execute(insert(schema.tickets), rows)
            conn.execute(insert(schema.timeline_events), events)
        written += len(events)
    assert busy_row is not None
    events, state = busy_timeline(busy_row["id"], busy_row["opened_at"], busy_events)
    with db.write.begin() as conn:
        conn.execute(insert(schema.timeline_events), events)
        conn.execute(
            update(schema.tickets)
            .where(schema.tickets.c.id == busy_row["id"])
            .values(state=state, resolved_at=None, updated_at=events[-1]["at"])
        )
        upsert = sqlite_insert(schema.org_sequences).values(org=ORG, last_seq=count)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[schema.org_sequences.c.org], set_={"last_seq": count}
            )
        )
    written += len(events)
    # Fold the WAL back into the file, as autocheckpoint would soon; outside any transaction.
    with contextlib.closing(sqlite3.connect(str(db.write.url.database))) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - began, written


# -- the server (a child process) ---------------------------------------------------------------


async def serve(db_path: Path) -> None:
    settings = parse(config_text(db_path))
    db = open_database(settings.store_url)
    # The parent ran the migrations (migrate.upgrade_sync) before filling.
    store = TicketStore(db)
    store.start()
    encoded = json.dumps({"padding": "x" * 20_000}).encode()

    async def baseline_bytes(request: web.Request) -> web.Response:
        return web.Response(body=encoded, content_type="application/json")

    app = make_app(settings, store)
    add_pages(app, settings)
    app.router.add_get("/bench/bytes", baseline_bytes)
    await serve_until_stopped(app, store, db)


# -- measuring the server from outside ----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


@dataclass
class CpuWindow:
    label: str
    seconds: float = 0.0
    server_pct: float = 0.0  # of one core
    machine_pct: float = 0.0  # of all cores


async def cpu_window(pid: int, seconds: float, label: str) -> CpuWindow:
    cpu0, (busy0, total0), wall0 = cpu_seconds(pid), machine_ticks(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, (busy1, total1), wall1 = cpu_seconds(pid), machine_ticks(), time.perf_counter()
    wall = wall1 - wall0
    return CpuWindow(
        label,
        wall,
        100 * (cpu1 - cpu0) / wall,
        100 * (busy1 - busy0) / max(1, total1 - total0),
    )


# -- the client ---------------------------------------------------------------------------------


async def sign_in(session: aiohttp.ClientSession, base: str) -> str:
    """A browser's sign-in with the token: the session cookie's value."""
    async with session.get(base + "/login") as response:
        html = await response.text()
        if response.status != 200:
            raise RuntimeError(f"GET /login: {response.status}")
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    if found is None:
        raise RuntimeError("GET /login: no csrf field in the form")
    form = {"csrf": found.group(1), "token": TOKEN}
    async with session.post(base + "/login", data=form, allow_redirects=False) as response:
        await response.read()
        if response.status != 303 or response.headers.get("Location") != f"/orgs/{ORG}/tickets":
            raise RuntimeError(
                f"POST /login: {response.status} to {response.headers.get('Location')!r}"
            )
    cookie = session.cookie_jar.filter_cookies(URL(base + "/")).get(SESSION_COOKIE)
    if cookie is None:
        raise RuntimeError("POST /login set no session cookie")
    return cookie.value


@dataclass
class Query:
    label: str
    path: str
    api: bool
    check: Any  # callable(bytes) -> None, raising on a wrong answer
    timings: list[float] = field(default_factory=list)
    cold_ms: float = 0.0
    size: int = 0


def check_list(state: str | None) -> Any:
    def check(body: bytes) -> None:
        html = body.decode()
        rows = re.findall(r'data-seq="\d+" data-state="(\w+)"', html)
        if len(rows) != 50:
            raise RuntimeError(f"{len(rows)} rows on the list page, expected 50")
        if state and any(s != state for s in rows):
            raise RuntimeError(f"a row in another state than {state}")

    return check


def check_api_list(state: str | None) -> Any:
    def check(body: bytes) -> None:
        tickets = json.loads(body)["tickets"]
        if len(tickets) != 50:
            raise RuntimeError(f"{len(tickets)} tickets from the API, expected 50")
        if state and any(t["state"] != state for t in tickets):
            raise RuntimeError(f"a ticket in another state than {state}")

    return check


def check_detail(events: int) -> Any:
    def check(body: bytes) -> None:
        found = body.decode().count("<li data-event=")
        if found != events:
            raise RuntimeError(f"{found} timeline entries on the page, expected {events}")

    return check


def check_api_detail(events: int) -> Any:
    def check(body: bytes) -> None:
        found = len(json.loads(body)["timeline"])
        if found != events:
            raise RuntimeError(f"{found} timeline events from the API, expected {events}")

    return check


def groups(busy_seq: int, busy_events: int) -> list[list[Query]]:
    """Queries measured together, interleaved request by request."""
    tickets, api = f"/orgs/{ORG}/tickets", f"/api/v1/orgs/{ORG}/tickets"
    n = busy_events
    return [
        [
            Query("list page, state=open", tickets + "?state=open", False, check_list("open")),
            Query(
                "API list, state=open",
                api + "?state=open&limit=50",
                True,
                check_api_list("open"),
            ),
        ],
        [
            Query("list page, all", tickets, False, check_list(None)),
            Query("API list, all", api + "?limit=50", True, check_api_list(None)),
        ],
        [
            Query(
                "list page, state=resolved",
                tickets + "?state=resolved",
                False,
                check_list("resolved"),
            ),
            Query(
                "API list, state=resolved",
                api + "?state=resolved&limit=50",
                True,
                check_api_list("resolved"),
            ),
        ],
        [
            Query(f"detail page ({n} events)", f"{tickets}/{busy_seq}", False, check_detail(n)),
            Query(f"API detail ({n} events)", f"{api}/{busy_seq}", True, check_api_detail(n)),
        ],
        [Query("baseline bytes (20 KB)", "/bench/bytes", True, lambda body: None)],
    ]


async def measure_group(
    session: aiohttp.ClientSession, base: str, queries: list[Query], requests: int, warmup: int
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(warmup + requests):
        for query in queries:
            started = time.perf_counter()
            async with session.get(base + query.path, headers=auth if query.api else None) as r:
                body = await r.read()
            elapsed = (time.perf_counter() - started) * 1000
            if r.status != 200:
                raise RuntimeError(f"GET {query.path}: {r.status} {body[:300]!r}")
            if i == 0:
                query.check(body)
                query.cold_ms = elapsed
            query.size = len(body)
            if i >= warmup:
                query.timings.append(elapsed)


async def page_weight(session: aiohttp.ClientSession, base: str) -> list[tuple[str, int, int]]:
    """(url, bytes, gzip bytes) of the list page and each stylesheet and script it links."""
    parts = []
    async with session.get(base + f"/orgs/{ORG}/tickets") as response:
        html = await response.read()
    parts.append((f"/orgs/{ORG}/tickets", len(html), len(gzip.compress(html))))
    text = html.decode()
    links = re.findall(r'<link rel="stylesheet" href="([^"]+)"', text)
    links += re.findall(r'<script src="([^"]+)"', text)
    if not links:
        raise RuntimeError("the list page links no stylesheet or script")
    for link in links:
        async with session.get(base + link.replace("&amp;", "&")) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {link}: {response.status}")
        parts.append((link, len(body), len(gzip.compress(body))))
    return parts


@dataclass
class Stream:
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    got_event: asyncio.Event = field(default_factory=asyncio.Event)
    event_at: float | None = None
    page_ms: float | None = None
    page_done_at: float | None = None
    error: str | None = None
    reload: asyncio.Task[None] | None = None


async def hold_stream(
    http: aiohttp.ClientSession,
    pages: aiohttp.ClientSession,
    url: str,
    page_url: str,
    cookie: str,
    stream: Stream,
    reload_on_event: asyncio.Event,
) -> None:
    """One browser on the live stream: note when `event: tickets` comes, then (as tocsin.js
    does) GET the page again."""
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Accept": "text/event-stream"}
    try:
        async with http.get(url, headers=headers) as response:
            if response.status != 200 or not response.content_type.startswith("text/event-stream"):
                stream.error = f"{response.status} {response.content_type}"
                stream.connected.set()
                return
            async for line in response.content:
                if line.startswith(b"retry:"):
                    stream.connected.set()
                elif line.startswith(b"event: tickets") and stream.event_at is None:
                    stream.event_at = time.perf_counter()
                    stream.got_event.set()
                    if reload_on_event.is_set():
                        stream.reload = asyncio.get_running_loop().create_task(
                            reload_page(pages, page_url, cookie, stream)
                        )
    except (aiohttp.ClientError, ConnectionError) as exc:
        stream.error = stream.error or repr(exc)
        stream.connected.set()


async def reload_page(
    pages: aiohttp.ClientSession, page_url: str, cookie: str, stream: Stream
) -> None:
    started = time.perf_counter()
    try:
        async with pages.get(
            page_url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}", "Accept": "text/html"}
        ) as response:
            await response.read()
            if response.status != 200:
                stream.error = f"reload: {response.status}"
                return
    except (aiohttp.ClientError, ConnectionError) as exc:
        stream.error = f"reload: {exc!r}"
        return
    stream.page_done_at = time.perf_counter()
    stream.page_ms = (stream.page_done_at - started) * 1000


@dataclass
class LiveResult:
    windows: list[CpuWindow]
    clients: int
    connected: int
    errors: list[str]
    received: int
    event_delays_ms: list[float]
    reload_ms: list[float]
    reload_span_ms: float
    rss_streams: dict[str, int]
    live_url: str


async def live_test(
    base: str,
    pid: int,
    cookie: str,
    clients: int,
    idle_seconds: float,
    comment_seq: int,
    reload_herd: bool,
) -> LiveResult:
    page_url = base + f"/orgs/{ORG}/tickets?state=open"
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jar) as probe:
        async with probe.get(page_url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}) as r:
            html = await r.text()
        found = re.search(r'data-live="([^"]+)"', html)
        if found is None:
            raise RuntimeError("the list page names no live stream (data-live)")
        live_url = found.group(1).replace("&amp;", "&")

    await asyncio.sleep(3)  # let the latency runs' last work settle
    windows = [await cpu_window(pid, idle_seconds, "0 streams (baseline)")]

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, cookie_jar=jar
    )
    pages = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=60),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    herd = asyncio.Event()
    if reload_herd:
        herd.set()
    streams = [Stream() for _ in range(clients)]
    tasks: list[asyncio.Task[None]] = []
    try:
        for start in range(0, clients, 25):  # in steps, not to overrun the listen backlog
            for stream in streams[start : start + 25]:
                tasks.append(
                    asyncio.create_task(
                        hold_stream(http, pages, base + live_url, page_url, cookie, stream, herd)
                    )
                )
            await asyncio.wait_for(
                asyncio.gather(*(s.connected.wait() for s in streams[start : start + 25])), 30
            )
        connected = sum(1 for s in streams if s.connected.is_set() and s.error is None)
        await asyncio.sleep(2)  # the connections' set-up is not idle time
        windows.append(await cpu_window(pid, idle_seconds, f"{clients} streams, idle"))
        rss_streams = rss_kib(pid)

        async with pages.post(
            base + f"/api/v1/orgs/{ORG}/tickets/{comment_seq}/comments",
            json={"body": "Benchmark: one change while the streams listen."},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            await response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"POST comment: {response.status}")
        posted = time.perf_counter()
        deadline = posted + EVENT_WAIT
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.got_event.wait() for s in streams)), EVENT_WAIT
            )
        received = [s for s in streams if s.event_at is not None and s.event_at <= deadline]
        reloads = [s.reload for s in received if s.reload is not None]
        if reloads:  # the reloads the events started: let them finish (bounded)
            await asyncio.wait(reloads, timeout=60)
        reloaded = [s for s in received if s.page_ms is not None]
        span = max((s.page_done_at or posted for s in reloaded), default=posted) - posted
        return LiveResult(
            windows=windows,
            clients=clients,
            connected=connected,
            errors=[s.error for s in streams if s.error],
            received=len(received),
            event_delays_ms=[((s.event_at or posted) - posted) * 1000 for s in received],
            reload_ms=[s.page_ms for s in reloaded if s.page_ms is not None],
            reload_span_ms=span * 1000,
            rss_streams=rss_streams,
            live_url=live_url,
        )
    finally:
        tasks += [s.reload for s in streams if s.reload is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.close()
        await pages.close()


@dataclass
class Results:
    groups: list[list[Query]]
    weight: list[tuple[str, int, int]]
    rss_after_latency: dict[str, int]
    comment_seq: int
    live: LiveResult | None = None


async def client(args: argparse.Namespace, base: str, pid: int, busy_seq: int) -> Results:
    jar = aiohttp.CookieJar(unsafe=True)  # the default jar ignores cookies from IP addresses
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        cookie = await sign_in(session, base)
        measured = groups(busy_seq, args.timeline_events)
        for group in measured:
            labels = " | ".join(q.label for q in group)
            print(f"  measuring {labels} ...", flush=True)
            await measure_group(session, base, group, args.requests, args.warmup)
        weight = await page_weight(session, base)
        async with session.get(
            base + f"/api/v1/orgs/{ORG}/tickets?state=open&limit=1",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            newest_open = (await response.json())["tickets"][0]["seq"]
    results = Results(measured, weight, rss_kib(pid), newest_open)
    if args.sse_clients > 0:
        print(
            f"  live stream: {args.idle_seconds:.0f} s idle with 0, then {args.sse_clients} "
            "streams ...",
            flush=True,
        )
        results.live = await live_test(
            base,
            pid,
            cookie,
            args.sse_clients,
            args.idle_seconds,
            newest_open,
            not args.no_reload,
        )
    return results


# -- the report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: Results, rss_end: dict[str, int]) -> list[str]:
    failures: list[str] = []
    target = args.target_page_p95_ms
    print(
        f"\n  {args.tickets:,} tickets; {args.requests} sequential GETs each (after "
        f"{args.warmup} untimed), page and API twin interleaved"
    )
    print(
        f"  {'':<32}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}{'cold ms':>9}"
        f"{'body B':>10}"
    )
    for group in results.groups:
        twin = next((q for q in group if q.api), None)
        for query in group:
            p50, p95 = statistics.median(query.timings), pct(query.timings, 95)
            note = ""
            if not query.api and twin is not None:
                note = f"  {p95 / pct(twin.timings, 95):.1f}x API p95"
                targeted = query.label.startswith(("list page, state=open", "detail page"))
                verdict = "PASS" if p95 < target else "FAIL"
                note += f"  target p95 < {target:g}: {verdict}" if targeted else "  (info)"
                if targeted and p95 >= target:
                    failures.append(f"{query.label}: p95 {p95:.1f} ms >= {target:g} ms")
            print(
                f"  {query.label:<32}{p50:>8.2f}{p95:>8.2f}{pct(query.timings, 99):>8.2f}"
                f"{max(query.timings):>8.2f}{query.cold_ms:>9.2f}{query.size:>10,}{note}"
            )

    total = sum(size for _, size, _ in results.weight)
    zipped = sum(z for _, _, z in results.weight)
    limit = args.target_weight_kb * 1000
    print("\n  page weight (list page, first page of 50 rows, with what it links):")
    for url, size, z in results.weight:
        print(f"    {url:<72}{size:>9,} B  (gzip {z:,} B)")
    verdict = "PASS" if total < limit else "FAIL"
    print(
        f"    {'total':<72}{total:>9,} B  (gzip {zipped:,} B)  target < {limit:,.0f} B: {verdict}"
    )
    if total >= limit:
        failures.append(f"page weight {total:,} B >= {limit:,.0f} B")

    live = results.live
    if live is not None:
        print(f"\n  live stream {live.live_url}, {live.clients} clients:")
        for window in live.windows:
            print(
                f"    {window.label:<24} server CPU {window.server_pct:6.2f} % of a core over "
                f"{window.seconds:.1f} s   (machine busy {window.machine_pct:5.1f} % of "
                f"{os.cpu_count()} CPUs)"
            )
        idle = live.windows[-1].server_pct
        extra = idle - live.windows[0].server_pct
        verdict = "PASS" if idle < args.target_sse_cpu else "FAIL"
        print(
            f"    streams' cost: {extra:+.2f} % of a core over the baseline; with streams "
            f"{idle:.2f} %, target < {args.target_sse_cpu:g} %: {verdict}"
        )
        if idle >= args.target_sse_cpu:
            failures.append(f"{live.clients} idle streams: {idle:.2f} % of a core")
        print(f"    connected {live.connected}/{live.clients}")
        for error in sorted(set(live.errors))[:5]:
            print(f"    stream error: {error} (x{live.errors.count(error)})")
        delays = live.event_delays_ms
        verdict = "PASS" if live.received == live.clients else "FAIL"
        print(
            f"    after one comment (API): {live.received}/{live.clients} streams got "
            f"`event: tickets` within {EVENT_WAIT:g} s: {verdict}"
            + (
                f"  (after {min(delays):.0f}-{max(delays):.0f} ms; the server coalesces to "
                "one event a second)"
                if delays
                else ""
            )
        )
        if live.received != live.clients:
            failures.append(f"{live.received}/{live.clients} streams got the event")
        if live.reload_ms:
            print(
                "    (info) each then GETs its list page at once (the worst case: tocsin.js "
                "spreads them over 1.5 s): "
                f"{len(live.reload_ms)} pages, p50 {statistics.median(live.reload_ms):.0f} ms, "
                f"p95 {pct(live.reload_ms, 95):.0f} ms, max {max(live.reload_ms):.0f} ms; "
                f"the last served {live.reload_span_ms / 1000:.2f} s after the comment"
            )

    print("\n  server memory:")
    after = results.rss_after_latency["VmRSS"] / 1024
    print(f"    {'after the latency runs':<28}VmRSS {after:7.1f} MiB")
    if live is not None:
        grown = (live.rss_streams["VmRSS"] - results.rss_after_latency["VmRSS"]) / 1024
        print(
            f"    {f'with {live.clients} streams open':<28}VmRSS "
            f"{live.rss_streams['VmRSS'] / 1024:7.1f} MiB ({grown:+.1f})"
        )
    print(
        f"    {'at the end':<28}VmRSS {rss_end['VmRSS'] / 1024:7.1f} MiB "
        f"(peak VmHWM {rss_end['VmHWM'] / 1024:.1f} MiB)"
    )
    return failures


def drain(pipe: Any, lines: list[str]) -> None:
    """Read the server's output so a full pipe never blocks it; keep the last lines."""
    for line in pipe:
        lines.append(line.rstrip())
        del lines[:-50]


def main() -> int:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=Formatter
    )
    parser.add_argument("--tickets", type=int, default=100_000, help="tickets in the org")
    parser.add_argument(
        "--timeline-events", type=int, default=500, help="events of the detail page's ticket"
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="timed requests per page and per API twin"
    )
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests first, each")
    parser.add_argument("--mix", default="90,7,3", help="percent resolved,open,in_progress")
    parser.add_argument(
        "--sse-clients", type=int, default=200, help="live streams held open (0: skip the test)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="each CPU window: with no stream, then with the streams",
    )
    parser.add_argument(
        "--no-reload",
        action="store_true",
        help="streams do not GET the list page again on the event (tocsin.js does, within 1.5 s)",
    )
    parser.add_argument(
        "--target-page-p95-ms", type=float, default=50.0, help="list (state=open) and detail"
    )
    parser.add_argument(
        "--target-sse-cpu", type=float, default=10.0, help="%% of one core, streams idle"
    )
    parser.add_argument(
        "--target-weight-kb", type=float, default=150.0, help="list page + CSS + JS, 1 KB = 1000 B"
    )
    parser.add_argument("--dir", default=None, help="parent of the temp folder; None: TMPDIR")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve)))
        return 0

    mix_parts = tuple(float(x) for x in args.mix.split(","))
    if len(mix_parts) != 3:
        parser.error("--mix needs three numbers")
    if args.tickets < 1000:
        parser.error("--tickets: at least 1000 (the pages show 50 of each state)")
    mix = (mix_parts[0], mix_parts[1], mix_parts[2])
    busy_seq = args.tickets // 2
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-", dir=args.dir) as tmp:
        db_path = Path(tmp) / "tocsin.db"
        db = open_database(f"sqlite+aiosqlite:///{db_path}")
        migrate.upgrade_sync(db)
        print(f"{load_average()} at the start", flush=True)
        seconds, events = fill(db, args.tickets, mix, busy_seq, args.timeline_events)
        db.write.dispose()
        asyncio.run(db.read.dispose())
        print(
            f"filled {args.tickets:,} tickets and {events:,} timeline events in {seconds:.1f} s "
            f"(#{busy_seq} has {args.timeline_events}) ({db_path})",
            flush=True,
        )
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(db_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        server_lines: list[str] = []
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"the server did not start: {line!r}")
            threading.Thread(target=drain, args=(server.stdout, server_lines), daemon=True).start()
            base = f"http://127.0.0.1:{int(line.split()[1])}"
            print(f"server pid {server.pid} on {base}", flush=True)
            results = asyncio.run(client(args, base, server.pid, busy_seq))
            rss_end = rss_kib(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    failures = report(args, results, rss_end)
    problems = [
        line for line in server_lines if re.search(r"error|exception|traceback", line, re.I)
    ]
    print(f"\n  server output: {len(server_lines)} lines kept, {len(problems)} naming an error")
    for line in problems[:5]:
        print(f"    {line[:200]}")
    print(f"  {load_average()} at the end; whole run {time.perf_counter() - began:.0f} s")
    if float(Path("/proc/loadavg").read_text().split()[0]) > (os.cpu_count() or 1):
        print(
            "  WARNING: more runnable processes than CPUs: other work competed with the server "
            "and the client, so the latencies (tails most) are inflated; rerun when quieter"
        )
    for failure in failures:
        print(f"  FAIL {failure}")
    print("  PASS" if not failures else f"  FAILED ({len(failures)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
