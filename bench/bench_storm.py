"""Benchmark: an offline storm - N MQTT devices go offline within a second - against the daemon.

Issue "A runtime that keeps up". Real peers, each in a process of its own, all on 127.0.0.1:
mosquitto; N MQTT devices (default 5,000), each a [[devices]] entry with an MQTT status_topic
(retained `online` / `offline`, as a device and its Last Will publish them), published by this
script over raw MQTT sockets; one unrelated HTTP device (probed every second) that the script
can make answer 503; one [[webhooks]] endpoint (ticket.opened) on an aiohttp receiver that
records each arrival. The daemon is `python -m tocsin run` on a generated config (SQLite in a
temporary folder, monitor debounce 5 s).

Flow: every device publishes retained `online`; the daemon starts and the script waits until
/readyz answers 200 and GET /api/v1/orgs/storm/subjects shows every subject up. Quiet runs
first: the HTTP device fails alone (--quiet-runs times; each time its ticket opens and
resolves). Then the storm: `offline` for all N devices as fast as the broker takes it (t0 =
when the last one was written), and the HTTP device fails at the same moment.

Measured (the database is polled read-only every 0.1 s, so a ticket's time is when it and its
trigger row became visible, the script's clock, whatever the daemon stamps on it):
- each ticket's delay after its debounce: visible - (its device's offline publish + debounce);
  p99 and max; target: all N tickets, each within 2 s;
- the last ticket.opened webhook's arrival after the debounce (t0 + debounce): target 5 s;
- the HTTP device's detection delay, ticket visible - (failure start + debounce), in the storm
  against the quiet runs' median: target at most 1 s later;
- the daemon's peak RSS (VmHWM) and CPU.
Baselines in the same run, after the daemon has stopped: a bare sqlite3 loop writing N tickets
with their timeline events and trigger rows, 256 per transaction, the store's pragmas and schema
(bench_store_open's loop); a bare aiohttp client POSTing N webhook-sized bodies to the same
receiver with 16 connections (the default per-endpoint concurrency).

Exit status 1 when a target is missed. Run from the repository root:
    .venv/bin/python bench/bench_storm.py                   # 5,000 devices, ~2-3 minutes
    .venv/bin/python bench/bench_storm.py --devices 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from fleet import storm
from fleet.logscan import LogReader, first_and_last_lines
from fleet.peers import Child, Children, bench_start, free_port, start_mosquitto, tcp_ready
from fleet.procstat import (
    DELIVERY_PROCESS,
    child_running,
    cpu_seconds,
    load_average,
    memory_mib,
)
from fleet.profile import record_command, summarize
from fleet.receiver import bare_posts, receiver
from fleet.storm import HTTP_ID, ORG, TOKEN, DbWatcher, Seen

SCRIPT = Path(__file__).resolve()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--devices", type=int, default=5000, help="MQTT devices that go offline (5000)")
    add(
        "--spaces",
        type=int,
        default=0,
        help="put the devices in this many spaces: one Multiple devices offline ticket each "
        "is expected, no device's own (0: no spaces)",
    )
    add("--debounce", type=float, default=5.0, help="[monitor] debounce, s (5)")
    add("--http-interval", type=float, default=1.0, help="the HTTP device's interval, s (1)")
    add("--http-timeout", type=float, default=2.0, help="its probe timeout, s (2)")
    add("--quiet-runs", type=int, default=3, help="failures of the HTTP device alone (3)")
    add("--connections", type=int, default=2, help="MQTT connections publishing the storm (2)")
    add("--chunk", type=int, default=256, help="messages per socket write (256)")
    add("--settle", type=float, default=3.0, help="s to wait once every subject is up (3)")
    add("--start-timeout", type=float, default=300.0, help="s for the daemon to be ready (300)")
    add(
        "--timeout",
        type=float,
        help="s after the debounce to wait for every ticket and webhook (max(120, N/50))",
    )
    add("--bare-batch", type=int, default=256, help="tickets per transaction, bare loop (256)")
    add("--bare-concurrency", type=int, default=16, help="bare POST loop connections (16)")
    add("--sample-every", type=float, default=0.5, help="daemon CPU/RSS sampling, s (0.5)")
    add(
        "--storm-limit",
        type=int,
        default=0,
        help="[monitor] storm_limit (0: no cap, every device its own ticket; with N, N tickets "
        "and one storm ticket are expected, the HTTP device's detection is not measured)",
    )
    add(
        "--target-ticket",
        type=float,
        help="s after the debounce, each ticket (2; with --spaces 1, counted from the last "
        "offline message + the debounce)",
    )
    add("--target-webhook", type=float, default=5.0, help="s after the debounce, last webhook (5)")
    add("--target-http", type=float, default=1.0, help="s the HTTP delay may grow in the storm")
    add(
        "--profile",
        type=int,
        metavar="SECONDS",
        help="py-spy the daemon for SECONDS from just before the storm",
    )
    add(
        "--delivery",
        choices=["auto", "worker", "inline"],
        default="auto",
        help="[webhook_delivery] process (auto: a process of its own at 2,000 subjects)",
    )
    add("--dir", type=Path, help="parent of the temporary folder")
    add("--keep", action="store_true", help="keep the temporary folder (logs, config, db)")
    opts = parser.parse_args(argv)
    if opts.timeout is None:
        opts.timeout = max(120.0, opts.devices / 50)
    if opts.devices < 1 or opts.quiet_runs < 1:
        parser.error("need --devices >= 1 and --quiet-runs >= 1")
    if not 0 <= opts.spaces <= opts.devices:
        parser.error("need 0 <= --spaces <= --devices")
    if opts.target_ticket is None:
        opts.target_ticket = 1.0 if opts.spaces else 2.0
    return opts


# -- small helpers ------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path} unreadable)"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"p50 {percentile(values, 0.5):.2f} / p99 {percentile(values, 0.99):.2f} / "
        f"max {max(values):.2f} s"
    )


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    cpu: float
    rss: float


@dataclass
class HttpFailure:
    label: str
    failed_at: float  # the device's clock when it switched to 503
    ticket: Seen | None = None
    first_503: float | None = None  # arrival of the first check it answered 503

    def delay(self, debounce: float) -> float | None:
        done = self.ticket.complete_at if self.ticket else None
        return None if done is None else done - self.failed_at - debounce

    def daemon_part(self, debounce: float) -> float | None:
        """After its first failing check began: the part that is the daemon's, not the
        wait for the probe's next turn."""
        done = self.ticket.complete_at if self.ticket else None
        if done is None or self.first_503 is None:
            return None
        return done - self.first_503 - debounce


@dataclass
class Run:
    devices: int
    spawned_at: float = 0.0
    monitor_started: float = 0.0
    ready_at: float = 0.0
    rss_ready: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    quiet: list[HttpFailure] = field(default_factory=list)
    storm_http: HttpFailure | None = None
    storm_started: float = 0.0  # the first offline write
    t0: float = 0.0  # the last offline write
    published: list[float] = field(default_factory=list)  # per device
    tickets: dict[str, Seen] = field(default_factory=dict)  # storm tickets by subject
    unexpected: list[str] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    log_opened: dict[str, float] = field(default_factory=dict)  # "subject down" log times
    finished_at: float = 0.0
    timed_out: bool = False
    hwm: float = 0.0
    profile: str | None = None
    delivery: int | None = None  # the daemon's webhook delivery process, when it has one
    delivery_samples: list[Sample] = field(default_factory=list)
    delivery_hwm: float = 0.0
    delivery_profile: str | None = None
    exit_code: int | None = None
    stop_seconds: float = 0.0
    db_missing_trigger: int = 0
    bare_seconds: float = 0.0
    bare_post_seconds: float = 0.0
    watcher: DbWatcher | None = None
    log: LogReader | None = None


async def sampler(samples: list[Sample], pid: int, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cpu = cpu_seconds(pid)
        if cpu is None:
            return
        samples.append(Sample(time.time(), cpu, memory_mib(pid) or 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def wait_monitor_started(daemon: Child, log: LogReader, deadline: float) -> float:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if not daemon.running:
            raise SystemExit(f"the daemon exited early:\n{tail(log.path)}")
        for entry in log.read():
            if entry.event == "health monitor started":
                return entry.at
        await asyncio.sleep(0.5)
    raise SystemExit(f"the monitor did not start within {deadline:g} s:\n{tail(log.path)}")


async def wait_ready(
    session: aiohttp.ClientSession, base: str, daemon: Child, run: Run, deadline: float
) -> None:
    """/readyz 200, then every subject up in GET /api/v1/orgs/{org}/subjects."""
    until = time.monotonic() + deadline
    last = "nothing yet"
    while time.monotonic() < until:
        if not daemon.running:
            raise SystemExit("the daemon exited while starting")
        try:
            async with session.get(f"{base}/readyz") as response:
                ready = response.status == 200
                last = f"/readyz {response.status}: {await response.text()}"
            if ready:
                async with session.get(f"{base}/api/v1/orgs/{ORG}/subjects") as response:
                    subjects = (await response.json())["subjects"]
                health: dict[str, int] = {}
                for s in subjects:
                    health[s["health"]] = health.get(s["health"], 0) + 1
                devices = [s for s in subjects if s["subject"]["type"] == "device"]
                up = sum(s["health"] == "up" for s in devices)
                last = f"{up}/{run.devices + 1} devices up ({health})"
                if up == run.devices + 1:
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(2)
    raise SystemExit(f"not every subject was up within {deadline:g} s: {last}")


async def set_http(session: aiohttp.ClientSession, url: str, failing: bool) -> float:
    async with session.post(f"{url}/control/state", json={"failing": failing}) as response:
        at: float = (await response.json())["at"]
        return at


async def http_checks(session: aiohttp.ClientSession, url: str) -> list[tuple[float, int]]:
    async with session.get(f"{url}/control/checks") as response:
        return [(float(a), int(s)) for a, s in (await response.json())["checks"]]


def http_tickets(watcher: DbWatcher, after_id: int) -> list[Seen]:
    return sorted(
        (s for s in watcher.tickets.values() if s.subject == HTTP_ID and s.ticket_id > after_id),
        key=lambda s: s.ticket_id,
    )


def ticket_state(db: Path, ticket_id: int) -> str | None:
    with contextlib.closing(storm.read_only(db)) as conn:
        row = conn.execute("SELECT state FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
    return None if row is None else str(row[0])


async def quiet_run(
    opts: argparse.Namespace,
    session: aiohttp.ClientSession,
    http_url: str,
    watcher: DbWatcher,
    db: Path,
    number: int,
) -> HttpFailure:
    """The HTTP device fails alone; wait for its ticket, then for it to resolve."""
    last = max((s.ticket_id for s in http_tickets(watcher, 0)), default=0)
    failure = HttpFailure(f"quiet {number}", await set_http(session, http_url, True))
    until = time.monotonic() + opts.debounce + 30
    while time.monotonic() < until:
        found = [s for s in http_tickets(watcher, last) if s.complete_at is not None]
        if found:
            failure.ticket = found[0]
            break
        await asyncio.sleep(0.1)
    await set_http(session, http_url, False)
    if failure.ticket is None:
        say(f"  {failure.label}: no ticket within {opts.debounce + 30:g} s")
        return failure
    until = time.monotonic() + 60
    while time.monotonic() < until:
        if ticket_state(db, failure.ticket.ticket_id) == "resolved":
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # past the device's 1 s reopen window: the next failure is new
    return failure


def note_first_503(failures: list[HttpFailure], checks: list[tuple[float, int]]) -> None:
    for failure in failures:
        failure.first_503 = next(
            (at for at, status in checks if status == 503 and at >= failure.failed_at - 0.01),
            None,
        )


async def storm_phase(
    opts: argparse.Namespace, children: Children, workdir: Path, run: Run
) -> None:
    broker_port = free_port()
    start_mosquitto(children, broker_port)
    http_port, hook_port, listen = free_port(), free_port(), free_port()
    device = children.spawn(
        "http-device", [sys.executable, str(SCRIPT), "--role", "http-device", str(http_port)]
    )
    hook = children.spawn(
        "receiver", [sys.executable, str(SCRIPT), "--role", "receiver", str(hook_port)]
    )
    for child, port in ((device, http_port), (hook, hook_port)):
        until = time.monotonic() + 20
        while not tcp_ready(port):
            if not child.running or time.monotonic() > until:
                raise SystemExit(f"{child.name} did not start; see {child.log.name}")
            await asyncio.sleep(0.05)
    http_url = f"http://127.0.0.1:{http_port}"
    hook_url = f"http://127.0.0.1:{hook_port}"

    say(f"storm: publishing retained 'online' for {opts.devices:,} devices")
    await asyncio.to_thread(
        storm.publish_statuses,
        broker_port,
        opts.devices,
        b"online",
        connections=opts.connections,
        chunk=opts.chunk,
    )
    db = workdir / "tocsin.db"
    secret = workdir / "webhook-secret"
    storm.write_secret(secret)
    text = storm.storm_config(
        db=db,
        listen_port=listen,
        broker_port=broker_port,
        devices=opts.devices,
        http_url=f"{http_url}/health",
        http_interval=opts.http_interval,
        http_timeout=opts.http_timeout,
        hook_url=f"{hook_url}/hook",
        secret_file=secret,
        debounce=opts.debounce,
        delivery=opts.delivery,
        spaces=opts.spaces,
        storm_limit=opts.storm_limit,
    )
    config = workdir / "storm.toml"
    config.write_text(text)
    say(f"storm: config {len(text) / 1e6:.1f} MB; starting the daemon")
    run.spawned_at = time.time()
    daemon = children.spawn(
        "daemon", [sys.executable, "-m", "tocsin", "run", "--config", str(config)]
    )
    log = LogReader(workdir / "daemon.log")
    run.log = log
    run.monitor_started = await wait_monitor_started(daemon, log, opts.start_timeout)
    base = f"http://127.0.0.1:{listen}"
    stop = asyncio.Event()
    profiler: Child | None = None
    watcher = DbWatcher(db)
    run.watcher = watcher
    tasks = [
        asyncio.create_task(sampler(run.samples, daemon.pid, opts.sample_every, stop)),
        asyncio.create_task(watcher.run(stop)),
    ]
    delivery_profiler: Child | None = None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await wait_ready(session, base, daemon, run, opts.start_timeout)
            run.ready_at = time.time()
            run.rss_ready = memory_mib(daemon.pid) or 0.0
            run.delivery = child_running(daemon.pid, DELIVERY_PROCESS)
            if run.delivery is not None:
                say(f"storm: the daemon's webhook delivery process is pid {run.delivery}")
                tasks.append(
                    asyncio.create_task(
                        sampler(run.delivery_samples, run.delivery, opts.sample_every, stop)
                    )
                )
            say(
                f"storm: monitor started {run.monitor_started - run.spawned_at:.1f} s after "
                f"spawn, every subject up {run.ready_at - run.spawned_at:.1f} s after spawn, "
                f"VmRSS {run.rss_ready:.0f} MiB ({load_average()})"
            )
            await asyncio.sleep(opts.settle)

            for number in range(1, opts.quiet_runs + 1):
                failure = await quiet_run(opts, session, http_url, watcher, db, number)
                run.quiet.append(failure)
                delay = failure.delay(opts.debounce)
                say(
                    f"  {failure.label}: HTTP device ticket "
                    + ("none" if delay is None else f"{delay:.2f} s after the debounce")
                )
            await asyncio.sleep(1.0)
            before = set(watcher.tickets)

            if opts.profile:
                profiler = children.spawn(
                    "py-spy",
                    record_command(daemon.pid, opts.profile, workdir / "daemon.pyspy.txt"),
                )
                if run.delivery is not None:
                    delivery_profiler = children.spawn(
                        "py-spy-delivery",
                        record_command(run.delivery, opts.profile, workdir / "delivery.pyspy.txt"),
                    )
                await asyncio.sleep(1.0)  # py-spy attached
            say(f"storm: publishing 'offline' for {opts.devices:,} devices ({load_average()})")
            # The HTTP device fails right after the last write, from the publishing thread.
            run.published, run.t0, failed_at = await asyncio.to_thread(
                storm.publish_statuses,
                broker_port,
                opts.devices,
                b"offline",
                connections=opts.connections,
                chunk=opts.chunk,
                then=functools.partial(storm.switch_http_device, http_url, True),
            )
            assert failed_at is not None
            run.storm_http = HttpFailure("storm", failed_at)
            run.storm_started = min(run.published)
            say(
                f"storm: {opts.devices:,} offline messages written in "
                f"{run.t0 - run.storm_started:.3f} s (t0 {clock(run.t0)} UTC); HTTP device "
                f"failing from {clock(run.storm_http.failed_at)}"
            )

            deadline = run.t0 + opts.debounce + opts.timeout
            expected = expected_tickets(opts)
            next_arrival = 0
            while True:
                async with session.get(
                    f"{hook_url}/control/arrivals", params={"since": str(next_arrival)}
                ) as response:
                    body = await response.json()
                run.webhooks += body["arrivals"]
                next_arrival = body["next"]
                new = [s for i, s in watcher.tickets.items() if i not in before]
                complete = [s for s in new if s.complete_at is not None]
                mqtt_done = sum(s.subject != HTTP_ID for s in complete)
                http_done = any(s.subject == HTTP_ID for s in complete)
                hooks = {w["subject"] for w in run.webhooks if w["type"] == "ticket.opened"}
                mqtt_hooks = len(hooks - {HTTP_ID})
                if opts.storm_limit:  # how many open before the storm's depends on the minute
                    stormed = any(s.subject == "storm" for s in complete) and "storm" in hooks
                    mqtt_done = expected if stormed else 0
                    mqtt_hooks, http_done = mqtt_done, True
                if mqtt_done >= expected and http_done and mqtt_hooks >= expected:
                    if opts.spaces or opts.storm_limit:  # no more may open meanwhile
                        await asyncio.sleep(2.0)
                    break
                if time.time() > deadline:
                    run.timed_out = True
                    say(
                        f"storm: gave up after {opts.timeout:g} s past the debounce: "
                        f"{mqtt_done:,} MQTT tickets, HTTP ticket {http_done}, "
                        f"{mqtt_hooks:,} webhooks"
                    )
                    break
                if not daemon.running:
                    raise SystemExit(f"the daemon died in the storm:\n{tail(log.path)}")
                await asyncio.sleep(0.5)
            run.finished_at = time.time()
            await asyncio.sleep(0.5)  # one more watcher poll
            checks = await http_checks(session, http_url)
            note_first_503([*run.quiet, run.storm_http], checks)
            for seen in watcher.tickets.values():
                if seen.ticket_id in before:
                    continue
                if seen.subject == HTTP_ID:
                    if run.storm_http.ticket is None:
                        run.storm_http.ticket = seen
                elif seen.subject in run.tickets:
                    run.unexpected.append(f"second ticket for {seen.subject}")
                else:
                    run.tickets[seen.subject] = seen
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        run.hwm = memory_mib(daemon.pid, "VmHWM") or 0.0
        if run.delivery is not None:
            run.delivery_hwm = memory_mib(run.delivery, "VmHWM") or 0.0
        if profiler is not None:
            profiler.stop(signal.SIGINT, timeout=opts.profile + 10)
            run.profile = summarize(workdir / "daemon.pyspy.txt")
        if delivery_profiler is not None:
            delivery_profiler.stop(signal.SIGINT, timeout=opts.profile + 10)
            run.delivery_profile = summarize(workdir / "delivery.pyspy.txt")
        stopping = time.monotonic()
        run.exit_code = daemon.stop(signal.SIGTERM, timeout=60)
        run.stop_seconds = time.monotonic() - stopping
    log.read()
    for entry in log.entries:
        if entry.event == "subject down: ticket opened":
            subject = str(entry.fields.get("subject", "")).split(":", 1)[-1]
            run.log_opened.setdefault(subject, entry.at)
    run.db_missing_trigger = missing_triggers(db)

    say(f"baseline: bare sqlite3, {opts.devices:,} tickets, {opts.bare_batch} per transaction")
    run.bare_seconds = await asyncio.to_thread(
        bare_sqlite_seconds, workdir / "bare.db", opts.devices, opts.bare_batch
    )
    say(f"baseline: bare aiohttp, {opts.devices:,} POSTs to the receiver")
    body = json.dumps(sample_body()).encode()
    run.bare_post_seconds = await bare_posts(
        f"{hook_url}/bare", opts.devices, opts.bare_concurrency, body
    )


def missing_triggers(db: Path) -> int:
    """Tickets without their ticket.opened trigger row, in the final database."""
    with contextlib.closing(storm.read_only(db)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM triggers g "
            "WHERE g.ticket_id = t.id AND g.type = 'ticket.opened')"
        ).fetchone()
    return int(row[0])


def bare_sqlite_seconds(path: Path, tickets: int, batch: int) -> float:
    """bench_store_open's bare loop: the four statements of an open (sequence, ticket, timeline
    event, trigger with its JSON snapshot), WAL + synchronous=FULL, `batch` per transaction, on
    a file with the store's schema (alembic head)."""
    import bench_store_open

    bench_store_open.fresh_schema(path)
    rate = bench_store_open.run_bare(path, tickets, batch, savepoints=False, dedup=False)
    return tickets / rate


def sample_body() -> dict[str, Any]:
    """A ticket.opened body about the size the daemon sends for an MQTT device (~1.4 KB; the
    report prints the real bodies' mean size beside it)."""
    at = "2026-11-27T03:28:10.200Z"
    return {
        "type": "ticket.opened",
        "timestamp": at,
        "data": {
            "org": ORG,
            "ticket": {
                "org": ORG,
                "seq": 1234,
                "state": "open",
                "source": "health_monitor",
                "kind": "device_offline",
                "subject": {"type": "device", "id": "mqtt-01234", "name": "MQTT device 1234"},
                "description": "**Device offline**: device `mqtt-01234` is failing its health "
                "probe.\n\n- **What failed:** retained 'offline' on storm/mqtt-01234/status\n"
                "- **Error class:** `offline`\n- **Since:** 2026-11-27 03:28:05 UTC\n\n"
                "Last probe results, newest first:\n\n| Time (UTC) | Result | Detail |\n|---|---|"
                "---|\n| 2026-11-27 03:28:05 UTC | unhealthy | retained 'offline' on storm/"
                "mqtt-01234/status |\n| 2026-11-27 03:20:00 UTC | healthy | retained 'online' on "
                "storm/mqtt-01234/status |" + " " * 300,
                "dedup_key": None,
                "opened_at": at,
                "updated_at": at,
                "resolved_at": None,
                "url": "http://127.0.0.1:8080/orgs/storm/tickets/1234",
            },
            "event": {
                "id": 1234,
                "type": "opened",
                "at": at,
                "actor": {"type": "health_monitor", "name": "health monitor"},
            },
        },
    }


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    baseline: str
    ratio: str
    ok: bool | None  # None: informational


def cpu_share(samples: list[Sample], start: float, end: float) -> tuple[float, float]:
    """(average, max over ~1 s) in % of one core between start and end."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return float("nan"), float("nan")
    avg = 100 * (inside[-1].cpu - inside[0].cpu) / max(1e-9, inside[-1].at - inside[0].at)
    peaks = []
    for i, a in enumerate(inside):
        for b in inside[i + 1 :]:
            if b.at - a.at >= 0.95:
                peaks.append(100 * (b.cpu - a.cpu) / (b.at - a.at))
                break
    return avg, max(peaks, default=float("nan"))


def expected_tickets(opts: argparse.Namespace) -> int:
    """The storm's tickets: one per device, or per space; with a storm limit, at most that
    many and the storm's own."""
    each = opts.spaces or opts.devices
    return min(each, opts.storm_limit) + 1 if opts.storm_limit else each


def report(opts: argparse.Namespace, run: Run) -> list[Row]:
    rows: list[Row] = []
    debounce = opts.debounce
    # When each expected ticket is due: a device's, its offline message + the debounce; a
    # space's, the last offline message + the debounce.
    if opts.spaces:
        index = {storm.space_of(n, opts.devices, opts.spaces): run.t0 for n in range(opts.devices)}
    else:
        index = {storm.mqtt_id(n): run.published[n] for n in range(opts.devices)}
    if opts.storm_limit:
        index["storm"] = run.t0  # the storm's ticket: due with the last device's
    delays, stamped, logged = [], [], []
    for subject, seen in run.tickets.items():
        published = index.get(subject)
        if published is None:
            run.unexpected.append(subject)
            continue
        due = published + debounce
        if seen.complete_at is not None:
            delays.append(seen.complete_at - due)
        stamped.append(seen.opened_at - due)
        if subject in run.log_opened:
            logged.append(run.log_opened[subject] - due)
    expected = expected_tickets(opts)
    got = len(delays)
    if opts.storm_limit and "storm" in run.tickets:
        # The limit counts every ticket of the org's minute (the quiet runs' and the HTTP
        # device's too): fewer devices than the limit may have their own before the storm's.
        expected = got
        rows.append(
            Row(
                "own tickets before the storm's",
                f"{got - 1:,} devices",
                f"<= {opts.storm_limit}",
                "",
                "",
                got - 1 <= opts.storm_limit,
            )
        )
    complete = sorted(s.complete_at for s in run.tickets.values() if s.complete_at)
    span = complete[-1] - complete[0] if len(complete) > 1 else float("nan")
    opened = [w for w in run.webhooks if w["type"] == "ticket.opened" and w["subject"] in index]
    first_arrival: dict[str, float] = {}
    for w in opened:
        first_arrival.setdefault(w["subject"], w["at"])
    hook_delays = [at - (index[s] + debounce) for s, at in first_arrival.items()]
    hook_ids = {w["id"] for w in opened}
    arrivals = sorted(first_arrival.values())
    hook_span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    last_hook = arrivals[-1] - (run.t0 + debounce) if arrivals else float("nan")

    say()
    in_spaces = f" in {opts.spaces:,} spaces" if opts.spaces else ""
    say(f"== storm: {opts.devices:,} MQTT devices{in_spaces} offline, debounce {debounce:g} s ==")
    say(
        f"offline written {clock(run.storm_started)}-{clock(run.t0)} UTC "
        f"({run.t0 - run.storm_started:.3f} s, {opts.connections} connections); "
        f"tickets visible {clock(complete[0]) if complete else '-'}-"
        f"{clock(complete[-1]) if complete else '-'}"
    )
    say(f"tickets for the storm's devices: {got:,} of {expected:,} (with their trigger rows)")
    say(f"  visible in the database after the debounce: {spread(delays)}")
    say(f"  the daemon's opened_at after the debounce:  {spread(stamped)}")
    say(f"  its 'subject down: ticket opened' log line:  {spread(logged)}")
    if delays:
        seconds = sorted(delays)
        for limit in (0.5, 1.0, 2.0, 5.0, 10.0):
            inside = sum(d <= limit for d in seconds)
            say(f"  within {limit:>4g} s: {inside:>6,} ({100 * inside / expected:5.1f}%)")
    say(
        f"database watcher: {run.watcher.polls if run.watcher else 0:,} polls, mean "
        f"{1000 * (run.watcher.poll_seconds / max(1, run.watcher.polls)) if run.watcher else 0:.1f}"
        f" ms each; tickets without a ticket.opened trigger in the final file: "
        f"{run.db_missing_trigger}"
    )
    sizes = [w.get("bytes", 0) for w in opened]
    say(
        f"webhook bodies: mean {sum(sizes) / max(1, len(sizes)):,.0f} bytes (the bare loop's: "
        f"{len(json.dumps(sample_body())):,})"
    )
    say(
        f"webhooks (ticket.opened, storm devices): {len(first_arrival):,} tickets, "
        f"{len(hook_ids):,} webhook-ids, {len(opened):,} requests; after the debounce: "
        f"{spread(hook_delays)}"
    )

    quiet = [f.delay(debounce) for f in run.quiet]
    quiet_ok = [d for d in quiet if d is not None]
    quiet_median = percentile(quiet_ok, 0.5)
    storm_http = run.storm_http.delay(debounce) if run.storm_http else None
    say()
    say("HTTP device: detection delay = ticket visible - (failure start + debounce)")
    for failure in [*run.quiet, *([run.storm_http] if run.storm_http else [])]:
        delay, part = failure.delay(debounce), failure.daemon_part(debounce)
        wait = (failure.first_503 - failure.failed_at) if failure.first_503 else None
        say(
            f"  {failure.label:<8} delay "
            + ("none" if delay is None else f"{delay:6.2f} s")
            + " = first failing check after "
            + ("-" if wait is None else f"{wait:.2f} s")
            + " + the daemon's part "
            + ("-" if part is None else f"{part:.2f} s")
        )

    start = run.t0
    end = max(run.finished_at, start + 1)
    cpu_avg, cpu_peak = cpu_share(run.samples, start, end)
    quiet_cpu, _ = cpu_share(run.samples, run.ready_at, run.ready_at + opts.settle)
    rss_before = max((s.rss for s in run.samples if s.at <= run.t0), default=run.rss_ready)
    rss_max = max((s.rss for s in run.samples), default=0.0)
    say()
    say(
        f"daemon: VmRSS {run.rss_ready:.0f} MiB when every subject was up, {rss_before:.0f} "
        f"MiB before the storm, max sampled {rss_max:.0f} MiB, VmHWM {run.hwm:.0f} MiB; CPU "
        f"{cpu_avg:.0f}% of a core from t0 to the end ({end - start:.1f} s), max over 1 s "
        f"{cpu_peak:.0f}%; idle before the storm {quiet_cpu:.0f}%"
    )
    say(f"daemon stop: exit {run.exit_code} after {run.stop_seconds:.1f} s")
    if run.log is not None:
        log = run.log
        say(f"daemon log: {dict(log.levels)}")
        loud = Counter(
            f"{x.level}: {x.event}"
            for x in log.entries
            if x.level in ("warning", "error", "critical")
            and x.event != "subject down: ticket opened"
        )
        for event, count in loud.most_common(12):
            say(f"  {count} x {event[:110]}")
        for entry in log.tracebacks[:3]:
            say(f"  traceback at {clock(entry.at)} ({entry.event}):")
            text = first_and_last_lines(str(entry.fields["exception"]))
            say("    " + text.replace("\n", "\n    "))
        if log.not_json:
            say(f"  {len(log.not_json)} lines not JSON, e.g. {log.not_json[0][:200]}")

    p99, worst = percentile(delays, 0.99), max(delays, default=float("nan"))
    rows.append(
        Row(
            "tickets opened, with trigger row",
            f"{got:,}/{expected:,}",
            "all",
            "",
            "",
            got == expected and run.db_missing_trigger == 0,
        )
    )
    rows.append(
        Row(
            "ticket open after debounce, p99",
            f"{p99:.2f} s",
            f"<= {opts.target_ticket:g} s",
            "",
            "",
            got == expected and p99 <= opts.target_ticket,
        )
    )
    rows.append(
        Row(
            "ticket open after debounce, max",
            f"{worst:.2f} s",
            f"<= {opts.target_ticket:g} s",
            "",
            "",
            got == expected and worst <= opts.target_ticket,
        )
    )
    rows.append(
        Row(
            "span first -> last ticket",
            f"{span:.2f} s",
            "",
            f"bare sqlite3 {run.bare_seconds:.2f} s",
            f"{span / run.bare_seconds:.1f}x" if run.bare_seconds else "",
            None,
        )
    )
    rows.append(
        Row(
            "last ticket.opened webhook after debounce",
            f"{last_hook:.2f} s ({len(first_arrival):,}/{expected:,})",
            f"<= {opts.target_webhook:g} s, all",
            "",
            "",
            len(first_arrival) == expected and last_hook <= opts.target_webhook,
        )
    )
    rows.append(
        Row(
            "span first -> last webhook",
            f"{hook_span:.2f} s",
            "",
            f"bare POST x{opts.devices:,} {run.bare_post_seconds:.2f} s",
            f"{hook_span / run.bare_post_seconds:.1f}x" if run.bare_post_seconds else "",
            None,
        )
    )
    http_ok = storm_http is not None and bool(quiet_ok) and not opts.storm_limit
    rows.append(
        Row(
            "HTTP device detection delay in storm",
            "none" if storm_http is None else f"{storm_http:.2f} s",
            f"<= quiet + {opts.target_http:g} s",
            f"quiet median {quiet_median:.2f} s ({', '.join(f'{d:.2f}' for d in quiet_ok)})",
            f"{storm_http - quiet_median:+.2f} s" if http_ok and storm_http is not None else "",
            None
            if opts.storm_limit  # held by the storm too: its own ticket is not expected
            else http_ok
            and storm_http is not None
            and storm_http <= quiet_median + opts.target_http,
        )
    )
    rows.append(
        Row(
            "daemon peak RSS (VmHWM)",
            f"{run.hwm:.0f} MiB",
            "",
            f"before the storm {rss_before:.0f} MiB",
            f"{run.hwm / rss_before:.2f}x" if rss_before else "",
            None,
        )
    )
    rows.append(
        Row(
            "daemon CPU, t0 -> end",
            f"{cpu_avg:.0f}% (max 1 s {cpu_peak:.0f}%)",
            "",
            f"idle {quiet_cpu:.0f}%",
            "",
            None,
        )
    )
    if run.delivery is not None:
        hook_avg, hook_peak = cpu_share(run.delivery_samples, start, end)
        rows.append(
            Row(
                "delivery process CPU, t0 -> end; VmHWM",
                f"{hook_avg:.0f}% (max 1 s {hook_peak:.0f}%); {run.delivery_hwm:.0f} MiB",
                "",
                "",
                "",
                None,
            )
        )
    rows.append(
        Row(
            "daemon alive, stopped cleanly",
            f"exit {run.exit_code} in {run.stop_seconds:.1f} s",
            "exit 0",
            "",
            "",
            run.exit_code == 0,
        )
    )
    if run.unexpected:
        rows.append(Row("unexpected tickets", ", ".join(run.unexpected[:5]), "none", "", "", False))
    if run.profile:
        say()
        say("== py-spy profile of the daemon, from just before the storm ==")
        say(run.profile)
    if run.delivery_profile:
        say()
        say("== py-spy profile of the webhook delivery process, the same window ==")
        say(run.delivery_profile)
    return rows


# -- main ---------------------------------------------------------------------------------------


def run_hidden_role(argv: list[str]) -> None:
    role, rest = argv[1], argv[2:]
    if role == "http-device":
        asyncio.run(storm.http_device(int(rest[0])))
    elif role == "receiver":
        asyncio.run(receiver(int(rest[0])))
    else:
        raise SystemExit(f"unknown role {role}")


def main(argv: list[str]) -> int:
    begun = bench_start(argv, run_hidden_role, parse_args, "tocsin-storm-")
    if begun is None:
        return 0
    opts, workdir, children, started = begun
    say(
        f"bench_storm at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {opts.devices:,} devices, "
        f"{load_average()}, work folder {workdir}"
    )
    run = Run(opts.devices)
    try:
        asyncio.run(storm_phase(opts, children, workdir, run))
        rows = report(opts, run)
    finally:
        children.stop_all()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say()
    say(f"== summary ({time.time() - started:.0f} s, {load_average()} at the end) ==")
    say("| figure | measured | target | baseline | ratio | |")
    say("|---|---|---|---|---|---|")
    for row in rows:
        mark = "info" if row.ok is None else ("PASS" if row.ok else "**FAIL**")
        cells = [row.figure, row.measured, row.target, row.baseline, row.ratio, mark]
        say("| " + " | ".join(cells) + " |")
    if opts.keep:
        say(f"kept {workdir}")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
