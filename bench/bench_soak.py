"""Benchmark: a long run of the daemon on a healthy fleet while faults an on-site box meets
come and go.

Issue "Faults an on-site box meets". The fleet of bench_fleet.py, every peer real and in a
process of its own, all on 127.0.0.1: --subjects (10,000) = 60% MQTT heartbeat devices (a
publisher that reconnects when the broker restarts), 20% HTTP devices (the demo's
SimulatedSite), 20% SNMP devices (snmpd agents); every device stays healthy throughout. One
[[webhooks]] endpoint on a receiver process that records each delivery; this script opens and
resolves a workflow ticket through the API every --ticket-every seconds, so triggers keep
flowing. The daemon's SQLite file lives on a small tmpfs (--tmpfs-mb) from the start.

After --warmup, for --minutes, a fault every --fault-every (shuffled deck of the kinds,
--seed printed; short runs get at least three), each cleared after a bounded time:
  disk_full       the bench fills the store's tmpfs, holds it full 20-60 s, frees it
  locked          a second process holds BEGIN EXCLUSIVE on the SQLite file 15-20 s
  sigstop         SIGSTOP the daemon 30-120 s, then SIGCONT
  webhook_hang    the receiver accepts deliveries and never answers, for 60 s
  broker_restart  mosquitto stopped and started again 2-5 s later, persistence on or off
  config_rename   the config file renamed away + SIGHUP; restored after 5-15 s + SIGHUP
(short runs cap each hold at 60% of the fault period; sigstop at least 30 s, locked 15 s).

Measured: the daemon alive throughout; VmRSS every --sample-every s, the median of the last 10
minutes (the last third for runs under 30 minutes) against that of the first 10 minutes (first
third) after warm-up: at most 10% growth; false tickets (any ticket for a fleet device: the
fleet never fails) none; lost triggers (a trigger row with no 2xx-answered delivery at the
receiver after a --drain) none; for every fault, whether the daemon logged it (the JSON log's
events in the fault's window) and whether it cleared (/readyz 200 again, plus the fault's own
sign: writes resumed, broker back, reload taken, deliveries answered).

Exit status 1 when a target is missed. Run from the repository root (as root, for the tmpfs):
    .venv/bin/python bench/bench_soak.py                 # 60 minutes, 10,000 subjects
    .venv/bin/python bench/bench_soak.py --minutes 3     # a short run: 3 faults
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from fleet import sim
from fleet.daemon import MQTT_PREFIX, ORG, TOKEN, fleet_config, health_counts
from fleet.logscan import Entry, LogReader, first_and_last_lines
from fleet.peers import Child, Children, bench_start, free_port, start_snmpd, tcp_ready
from fleet.procstat import (
    DELIVERY_PROCESS,
    PROBE_WORKER,
    child_running,
    cpu_seconds,
    load_average,
    memory_mib,
)
from fleet.receiver import receiver
from fleet.soak import (
    fill,
    free_bytes,
    heartbeats,
    hold_lock,
    mount_tmpfs,
    start_broker,
    unmount,
)
from fleet.storm import write_secret

SCRIPT = Path(__file__).resolve()
KINDS = ("disk_full", "locked", "sigstop", "webhook_hang", "broker_restart", "config_rename")
HOOK = "soak-hook"
WORKFLOW_TOKEN = "soak-bench-workflow-token"
SUBJECT_PREFIXES = ("http-", "snmp-", "mqtt-")  # the fleet's device ids
DEFAULT_FAULT_EVERY = 240.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--minutes", type=float, default=60.0, help="length of the faulty phase (60)")
    add("--subjects", type=int, default=10_000, help="60%% MQTT, 20%% HTTP, 20%% SNMP (10000)")
    add("--interval", type=float, default=30.0, help="probe and heartbeat interval, s (30)")
    add("--debounce", type=float, default=60.0, help="s (60)")
    add("--heartbeat-timeout", type=float, default=60.0, help="s (60)")
    add("--fault-every", type=float, help="s between faults (240; short runs: >= 3 faults)")
    add("--faults", default=",".join(KINDS), help="kinds to draw from (all)")
    add("--seed", type=int, help="fault order and holds (default: random, printed)")
    add("--warmup", type=float, default=90.0, help="s after the monitor started (90)")
    add("--drain", type=float, default=300.0, help="s at most for triggers to be delivered (300)")
    add("--clear-within", type=float, default=120.0, help="s for a fault to clear (120)")
    add(
        "--tmpfs-mb",
        type=int,
        help="size of the store's tmpfs, MiB (64 + 12 KiB per subject: 181 at 10,000)",
    )
    add("--no-tmpfs", action="store_true", help="store in the work folder (no disk_full)")
    add("--sample-every", type=float, default=10.0, help="daemon RSS/CPU sampling, s (10)")
    add("--ticket-every", type=float, default=20.0, help="workflow ticket traffic, s (20)")
    add("--snmp-agents", type=int, default=3, help="snmpd processes (3)")
    add(
        "--webhook-schedule",
        default="5s,10s,20s,30s,1m,1m,2m,2m,5m,5m",
        help="[webhook_delivery] schedule: short, so a bounded drain sees retries through",
    )
    add("--target-rss-growth", type=float, default=10.0, help="%% (10)")
    add("--dir", type=Path, help="parent of the temporary folder")
    add("--keep", action="store_true", help="keep the temporary folder (logs, config, db)")
    opts = parser.parse_args(argv)
    opts.faults = [k.strip() for k in opts.faults.split(",") if k.strip()]
    unknown = set(opts.faults) - set(KINDS)
    if unknown or not opts.faults:
        parser.error(f"--faults: choose from {', '.join(KINDS)}")
    if opts.seed is None:
        opts.seed = random.SystemRandom().randrange(1, 1_000_000)
    duration = opts.minutes * 60
    if opts.fault_every is None:
        opts.fault_every = DEFAULT_FAULT_EVERY
        if duration / opts.fault_every < 3:
            opts.fault_every = max(60.0, duration / 4)
    if opts.tmpfs_mb is None:
        opts.tmpfs_mb = 64 + math.ceil(opts.subjects * 12 / 1024)
    opts.mqtt = round(opts.subjects * 0.6)
    opts.http = round(opts.subjects * 0.2)
    opts.snmp = opts.subjects - opts.mqtt - opts.http
    if opts.snmp < opts.snmp_agents or opts.http < 1 or opts.mqtt < 1:
        parser.error("--subjects too small")
    return opts


# -- small helpers ------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path} unreadable)"


class DaemonDied(Exception):
    pass


# -- state shared by the tasks ------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    rss: float
    cpu: float
    worker_rss: float = 0.0  # the daemon's probe worker
    delivery_rss: float = 0.0  # its webhook delivery process


@dataclass
class Fault:
    number: int
    kind: str
    hold: float
    params: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # the fault is in effect from here ...
    cleared: float = 0.0  # ... to here (the bench undid it)
    ready_again: float | None = None  # first /readyz 200 after `cleared`
    readyz_during: Counter[str] = field(default_factory=Counter)
    logged: list[str] = field(default_factory=list)  # the expected events seen
    recovered: list[str] = field(default_factory=list)  # the fault's own sign of recovery
    others: Counter[str] = field(default_factory=Counter)  # other warnings/errors in its window
    api: Counter[str] = field(default_factory=Counter)  # workflow API results in its window
    notes: list[str] = field(default_factory=list)
    bit: bool = True  # a store fault had an effect: some write was refused or failed

    @property
    def was_logged(self) -> bool:
        return bool(self.logged)

    @property
    def did_clear(self) -> bool:
        return self.ready_again is not None and bool(self.recovered)


@dataclass
class Soak:
    opts: argparse.Namespace
    workdir: Path
    children: Children
    store_dir: Path = Path()
    tmpfs: bool = False
    tmpfs_note: str = ""
    db: Path = Path()
    config: Path = Path()
    base: str = ""
    hook_url: str = ""
    broker_port: int = 0
    broker: Child | None = None
    broker_persistence: bool = False
    daemon: Child | None = None
    log: LogReader | None = None
    samples: list[Sample] = field(default_factory=list)
    readyz: list[tuple[float, str]] = field(default_factory=list)
    # (when it was sent, what, result: the status, "no answer" after 10 s, or the error)
    api_calls: list[tuple[float, str, str]] = field(default_factory=list)
    arrivals: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    monitor_started: float = 0.0
    soak_start: float = 0.0
    soak_end: float = 0.0
    died: str | None = None
    lost: list[tuple[int, str, int]] = field(default_factory=list)
    triggers: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    tickets: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    health_start: Counter[tuple[str, str]] = field(default_factory=Counter)
    health_end: Counter[tuple[str, str]] = field(default_factory=Counter)
    db_bytes: int = 0
    heartbeat_stats: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stop_seconds: float = 0.0
    hwm: float = 0.0
    drained_in: float | None = None
    stopping_at: float = float("inf")  # when the daemon was sent SIGTERM
    settled_in: float | None = None  # every subject up again, this long after the drain

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.running

    def start_broker(self, name: str, persistence: bool) -> Child:
        self.broker_persistence = persistence
        return start_broker(self.children, name, self.broker_port, persistence=persistence)

    def free(self) -> int:
        return free_bytes(self.store_dir)

    def check_alive(self) -> None:
        if not self.alive():
            code = self.daemon.process.returncode if self.daemon else None
            if self.died is None:
                self.died = f"exit {code} at {clock(time.time())}"
            raise DaemonDied(self.died)


# -- background tasks ---------------------------------------------------------------------------


async def sample_daemon(soak: Soak, stop: asyncio.Event) -> None:
    assert soak.daemon is not None
    pid = soak.daemon.pid
    while not stop.is_set():
        cpu, rss = cpu_seconds(pid), memory_mib(pid)
        if cpu is None or rss is None or not soak.alive():
            return
        worker, delivery = (child_running(pid, m) for m in (PROBE_WORKER, DELIVERY_PROCESS))
        soak.samples.append(
            Sample(
                time.time(),
                rss,
                cpu,
                (memory_mib(worker) or 0.0) if worker else 0.0,
                (memory_mib(delivery) or 0.0) if delivery else 0.0,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), soak.opts.sample_every)


async def poll_readyz(soak: Soak, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=3)
    while not stop.is_set():
        asked = time.time()
        try:
            async with session.get(f"{soak.base}/readyz", timeout=timeout) as response:
                result = str(response.status)
                if response.status != 200:
                    body = await response.json()
                    bad = [k for k, v in body.get("checks", {}).items() if v != "ok"]
                    result += " " + ",".join(bad)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        soak.readyz.append((asked, result))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def read_log(soak: Soak, stop: asyncio.Event) -> None:
    assert soak.log is not None
    while not stop.is_set():
        soak.log.read()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def workflow_traffic(soak: Soak, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Open a workflow ticket, resolve the previous ones: triggers for the webhook endpoint."""
    headers = {"Authorization": f"Bearer {WORKFLOW_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=10)
    unresolved: list[int] = []
    number = 0
    while not stop.is_set():
        number += 1
        body = {
            "source": "workflow",
            "subject": {"type": "integration", "id": f"soak-flow-{number}", "name": "Soak flow"},
            "kind": "soak_check",
            "description": f"Soak benchmark ticket {number}",
            "dedup_key": f"soak-{number}",
        }
        url = f"{soak.base}/api/v1/orgs/{ORG}/tickets"
        asked = time.time()
        try:
            async with session.post(url, json=body, headers=headers, timeout=timeout) as r:
                result = str(r.status)
                if r.status in (200, 201):
                    unresolved.append(int((await r.json())["seq"]))
        except (aiohttp.ClientError, TimeoutError) as exc:
            result = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        soak.api_calls.append((asked, "open", result))
        for seq in list(unresolved[:-1]):
            asked = time.time()
            try:
                async with session.post(
                    f"{url}/{seq}/resolve", json={}, headers=headers, timeout=timeout
                ) as r:
                    result = str(r.status)
                    if r.status in (200, 409):
                        unresolved.remove(seq)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
            soak.api_calls.append((asked, "resolve", result))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), soak.opts.ticket_every)


async def fetch_arrivals(soak: Soak, session: aiohttp.ClientSession) -> None:
    async with session.get(
        f"{soak.hook_url}/control/arrivals", params={"since": str(len(soak.arrivals))}
    ) as response:
        soak.arrivals += (await response.json())["arrivals"]


# -- the faults ---------------------------------------------------------------------------------


def plan_hold(kind: str, rng: random.Random, cap: float) -> tuple[float, dict[str, Any]]:
    """How long a fault lasts (the brief's ranges, capped for short runs) and its parameters."""
    if kind == "disk_full":
        return max(15.0, min(rng.uniform(20, 60), cap)), {}
    if kind == "locked":
        return max(15.0, min(rng.uniform(15, 20), cap)), {}
    if kind == "sigstop":
        return max(30.0, min(rng.uniform(30, 120), cap)), {}
    if kind == "webhook_hang":
        return max(15.0, min(60.0, cap)), {}
    if kind == "broker_restart":
        return rng.uniform(2, 5), {"persistence": rng.choice([True, False])}
    return max(5.0, min(rng.uniform(5, 15), cap)), {}  # config_rename


async def inject(soak: Soak, fault: Fault, session: aiohttp.ClientSession) -> None:
    """Cause the fault, hold it, undo it; fault.started / fault.cleared are when it held."""
    assert soak.daemon is not None
    kind, hold = fault.kind, fault.hold
    if kind == "disk_full":
        filler = soak.store_dir / "bench-filler"
        fault.started = time.time()
        written = await asyncio.to_thread(fill, filler)
        fault.notes.append(
            f"filled {written / 2**20:.1f} MiB in {time.time() - fault.started:.1f} s, "
            f"{soak.free() / 2**10:.0f} KiB left"
        )
        until = fault.started + hold
        refused = await write_pressure(soak, session, until)
        fault.notes.append(
            "writes while full: "
            + (f"refused after {refused:.1f} s" if refused is not None else "never refused")
        )
        await asyncio.sleep(max(0.0, until - time.time()))
        filler.unlink()
        fault.cleared = time.time()
    elif kind == "locked":
        child = soak.children.spawn(
            f"lock-{fault.number}",
            [sys.executable, str(SCRIPT), "--role", "lock", str(soak.db), f"{hold:.1f}"],
            stdout=subprocess.PIPE,
        )
        assert child.process.stdout is not None
        line = await asyncio.to_thread(child.process.stdout.readline)
        if not line.startswith(b"LOCKED"):
            fault.notes.append(f"the lock was not taken: {line!r}; see {child.log.name}")
            fault.started = fault.cleared = time.time()
            return
        fault.started = float(line.split()[1])
        line = await asyncio.to_thread(child.process.stdout.readline)
        fault.cleared = float(line.split()[1]) if line.startswith(b"RELEASED") else time.time()
        await asyncio.to_thread(child.process.wait)
    elif kind == "sigstop":
        fault.started = time.time()
        os.kill(soak.daemon.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(hold)
        finally:
            os.kill(soak.daemon.pid, signal.SIGCONT)
        fault.cleared = time.time()
    elif kind == "webhook_hang":
        async with session.post(
            f"{soak.hook_url}/control/hang", json={"seconds": hold}
        ) as response:
            answer = await response.json()
        fault.started, fault.cleared = float(answer["at"]), float(answer["until"])
        await asyncio.sleep(max(0.0, fault.cleared - time.time()))
    elif kind == "broker_restart":
        assert soak.broker is not None
        persistence = bool(fault.params["persistence"])
        fault.notes.append(
            f"persistence {'on' if soak.broker_persistence else 'off'} -> "
            f"{'on' if persistence else 'off'}"
        )
        fault.started = time.time()
        soak.broker.stop(signal.SIGTERM, timeout=10)
        await asyncio.sleep(hold)
        soak.broker = await asyncio.to_thread(
            soak.start_broker, f"mosquitto-{fault.number}", persistence
        )
        fault.cleared = time.time()
    elif kind == "config_rename":
        away = soak.config.with_name(soak.config.name + ".away")
        fault.started = time.time()
        soak.config.rename(away)
        os.kill(soak.daemon.pid, signal.SIGHUP)
        await asyncio.sleep(hold)
        away.rename(soak.config)
        os.kill(soak.daemon.pid, signal.SIGHUP)
        fault.cleared = time.time()


async def write_pressure(
    soak: Soak, session: aiohttp.ClientSession, until: float, most: int = 300
) -> float | None:
    """While the disk is full: open workflow tickets with 20,000-character descriptions (about
    40 KB written each, ticket and trigger snapshot) one after another, until one is refused
    or `most` are in. SQLite reuses its WAL file, so the daemon's usual small writes can go on
    for minutes on a full disk; these need new space. Returns when the first was refused."""
    headers = {"Authorization": f"Bearer {WORKFLOW_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=15)
    started = time.time()
    for number in range(most):
        if time.time() >= until:
            return None
        body = {
            "source": "workflow",
            "subject": {"type": "integration", "id": f"soak-bulk-{number}", "name": "Soak bulk"},
            "kind": "soak_bulk",
            "description": "x" * 20_000,
        }
        asked = time.time()
        try:
            async with session.post(
                f"{soak.base}/api/v1/orgs/{ORG}/tickets",
                json=body,
                headers=headers,
                timeout=timeout,
            ) as response:
                result = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            result = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        soak.api_calls.append((asked, "bulk open", result))
        if result not in ("200", "201"):
            return time.time() - started
    return None


# What each fault should make the daemon log, and the sign that it is over.
def expected_events(fault: Fault) -> tuple[Callable[[Entry], bool], Callable[[Entry], bool]]:
    kind = fault.kind

    def store(want: str) -> Callable[[Entry], bool]:
        return lambda e: (
            e.event in ("store writes failing", "store writes still failing")
            and e.fields.get("fault") == want
        )

    def named(*names: str) -> Callable[[Entry], bool]:
        return lambda e: any(e.event.startswith(n) for n in names)

    if kind == "disk_full":
        return store("disk_full"), named("store writes resumed")
    if kind == "locked":
        return store("locked"), named("store writes resumed")
    if kind == "sigstop":
        return named("event loop stalled"), lambda e: False  # cleared: /readyz 200 again
    if kind == "webhook_hang":
        return (
            named("webhook attempt failed", "webhook endpoint failing"),
            named("webhook endpoint recovered"),
        )
    if kind == "broker_restart":
        return named("mqtt.broker_down"), named("mqtt.broker_up")
    return named("config reload refused"), named("config reloaded")


def judge(soak: Soak, fault: Fault) -> None:
    """What the daemon logged and answered around one fault."""
    assert soak.log is not None
    cause, recovery = expected_events(fault)
    end = min((fault.ready_again or fault.cleared) + 30, soak.stopping_at)
    repeats: Counter[str] = Counter()
    for entry in soak.log.entries:
        if not fault.started - 1 <= entry.at <= end:
            continue
        if cause(entry):
            fault.logged.append(entry.event)
            repeats[entry.event] += 1
        elif entry.at >= fault.started and recovery(entry):
            repeats[entry.event] += 1
            if entry.at >= fault.cleared - 1:  # over once the bench undid it, not before
                fault.recovered.append(entry.event)
        elif entry.level in ("warning", "error", "critical"):
            fault.others[f"{entry.level}: {entry.event[:80]}"] += 1
    for at, result in soak.readyz:
        if fault.started <= at <= fault.cleared:
            fault.readyz_during[result] += 1
    for at, what, result in soak.api_calls:
        if fault.started <= at <= fault.cleared + 10:
            fault.api[f"{what} {result}"] += 1
    if fault.ready_again is not None:
        if fault.kind == "sigstop":
            fault.recovered.append("/readyz 200 after SIGCONT")
        elif fault.kind == "webhook_hang":
            answered = [a for a in soak.arrivals if a["at"] >= fault.cleared]
            if answered:
                wait = answered[0]["at"] - fault.cleared
                fault.recovered.append(f"deliveries answered again ({wait:.0f} s after)")
        elif fault.kind in ("disk_full", "locked"):
            ok = [
                at
                for at, what, result in soak.api_calls
                if at >= fault.cleared and what == "open" and result in ("200", "201")
            ]
            if ok:
                fault.recovered.append(
                    f"a ticket opened through the API {ok[0] - fault.cleared:.0f} s after"
                )
    if fault.kind in ("disk_full", "locked"):
        refused = [
            result
            for at, _, result in soak.api_calls
            if fault.started <= at <= fault.cleared + 1 and result not in ("200", "201")
        ]
        store_down = any("store" in result for result in fault.readyz_during)
        fault.bit = bool(refused or store_down or fault.logged)
        if not fault.bit:
            fault.notes.append("no effect: no write was refused while it held")
    loud = [f"{event} x{n}" for event, n in repeats.items() if n > 1]
    if loud:
        fault.notes.append("logged repeatedly: " + ", ".join(loud))
    fault.logged = sorted(set(fault.logged))
    fault.recovered = list(dict.fromkeys(fault.recovered))


async def wait_ready_again(soak: Soak, fault: Fault) -> None:
    until = time.time() + soak.opts.clear_within
    while time.time() < until:
        soak.check_alive()
        for at, result in soak.readyz:
            if at >= fault.cleared and result == "200":
                fault.ready_again = at
                return
        await asyncio.sleep(1.0)


# -- the run ------------------------------------------------------------------------------------


def build_config(soak: Soak, http_port: int, snmp_ports: list[int], listen: int) -> str:
    opts = soak.opts
    share, extra = divmod(opts.snmp, len(snmp_ports))
    text, _ = fleet_config(
        db=soak.db,
        listen_port=listen,
        http_base=f"http://127.0.0.1:{http_port}",
        http_count=opts.http,
        snmp_ports=[(p, share + (i < extra)) for i, p in enumerate(snmp_ports)],
        broker_port=soak.broker_port,
        mqtt_count=opts.mqtt,
        interval=opts.interval,
        debounce=opts.debounce,
        heartbeat_timeout=opts.heartbeat_timeout,
        http_timeout=5.0,
        snmp_timeout=1.0,
        snmp_retries=1,
        max_concurrency=256,
        per_host=256,
    )
    secret = soak.workdir / "webhook-secret"
    write_secret(secret)
    schedule = ", ".join(f'"{s.strip()}"' for s in opts.webhook_schedule.split(","))
    digest = hashlib.sha256(WORKFLOW_TOKEN.encode()).hexdigest()
    extra_lines = [
        "[[orgs.tokens]]",
        'name = "bench-workflow"',
        'scope = "workflow"',
        f'token_sha256 = "{digest}"',
        "[[webhooks]]",
        f'name = "{HOOK}"',
        f'url = "{soak.hook_url}/hook"',
        f'secret_file = "{secret}"',
        "[webhook_delivery]",
        f"schedule = [{schedule}]",
        "",
    ]
    marker = "[[mqtt.brokers]]"
    if marker not in text:
        raise SystemExit("fleet_config changed: no [[mqtt.brokers]] to insert before")
    return text.replace(marker, "\n".join(extra_lines) + marker, 1)


async def start_everything(soak: Soak) -> tuple[int, int]:
    """Peers, then the daemon; returns (heartbeat control port, API port)."""
    opts, children = soak.opts, soak.children
    soak.store_dir = soak.workdir / "store"
    if opts.no_tmpfs:
        soak.store_dir.mkdir()
        soak.tmpfs_note = "--no-tmpfs"
    else:
        why = mount_tmpfs(soak.store_dir, opts.tmpfs_mb)
        soak.tmpfs = why is None
        soak.tmpfs_note = why or f"tmpfs {opts.tmpfs_mb} MiB"
    if not soak.tmpfs and "disk_full" in opts.faults:
        opts.faults.remove("disk_full")
        say(f"no tmpfs for the store ({soak.tmpfs_note}): the disk_full fault is left out")
    soak.db = soak.store_dir / "tocsin.db"

    soak.broker_port = free_port()
    # Persistence on at first: a restart "with persistence" then restores what it saved.
    soak.broker = soak.start_broker("mosquitto", True)
    http_port, hook_port, control_port, listen = (free_port() for _ in range(4))
    site = children.spawn(
        "http-devices",
        [sys.executable, str(SCRIPT), "--role", "http-devices", str(http_port), str(opts.http)],
    )
    hook = children.spawn(
        "receiver", [sys.executable, str(SCRIPT), "--role", "receiver", str(hook_port)]
    )
    publisher = children.spawn(
        "heartbeats",
        [
            *(sys.executable, str(SCRIPT), "--role", "heartbeats", str(soak.broker_port)),
            *(str(control_port), str(opts.mqtt), str(opts.interval), MQTT_PREFIX),
            str(opts.seed),
        ],
    )
    for child, port in ((site, http_port), (hook, hook_port), (publisher, control_port)):
        until = time.monotonic() + 30
        while not tcp_ready(port):
            if not child.running or time.monotonic() > until:
                raise SystemExit(f"{child.name} did not start; see {child.log.name}")
            await asyncio.sleep(0.1)
    snmp_ports = []
    for i in range(opts.snmp_agents):
        port = free_port(socket.SOCK_DGRAM)
        await asyncio.to_thread(start_snmpd, children, f"snmpd-{i}", port)
        snmp_ports.append(port)
    soak.hook_url = f"http://127.0.0.1:{hook_port}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{http_port}/control/connections", json={"close": True}
        ) as response,
    ):
        response.raise_for_status()

    text = build_config(soak, http_port, snmp_ports, listen)
    soak.config = soak.workdir / "soak.toml"
    soak.config.write_text(text)
    soak.base = f"http://127.0.0.1:{listen}"
    say(
        f"soak: {opts.mqtt:,} MQTT + {opts.http:,} HTTP + {opts.snmp:,} SNMP subjects, store on "
        f"{soak.tmpfs_note} ({soak.store_dir}), config {len(text) / 1e6:.1f} MB"
    )
    spawned = time.time()
    soak.daemon = children.spawn(
        "daemon", [sys.executable, "-m", "tocsin", "run", "--config", str(soak.config)]
    )
    soak.log = LogReader(soak.workdir / "daemon.log")
    until = time.monotonic() + 300
    while not soak.monitor_started:
        if not soak.alive():
            raise SystemExit(f"the daemon exited early:\n{tail(soak.log.path)}")
        if time.monotonic() > until:
            raise SystemExit(f"the monitor did not start within 300 s:\n{tail(soak.log.path)}")
        for entry in soak.log.read():
            if entry.event == "health monitor started":
                soak.monitor_started = entry.at
        await asyncio.sleep(0.5)
    say(
        f"soak: daemon pid {soak.daemon.pid}, monitor started "
        f"{soak.monitor_started - spawned:.1f} s after spawn; warm-up {opts.warmup:g} s"
    )
    return control_port, listen


async def soak_phase(soak: Soak) -> None:
    opts = soak.opts
    control_port, _ = await start_everything(soak)
    stop, stop_traffic = asyncio.Event(), asyncio.Event()
    read_headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(
        headers=read_headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        tasks = [
            asyncio.create_task(sample_daemon(soak, stop)),
            asyncio.create_task(poll_readyz(soak, session, stop)),
            asyncio.create_task(read_log(soak, stop)),
            asyncio.create_task(workflow_traffic(soak, session, stop_traffic)),
        ]
        try:
            await sleep_watching(soak, soak.monitor_started + opts.warmup - time.time())
            soak.health_start = health_counts(soak.db)
            say(f"soak: after warm-up: {health_text(soak.health_start)} ({load_average()})")
            await fault_loop(soak, session)
            stop_traffic.set()
            await drain(soak, session)
        except DaemonDied as exc:
            say(f"soak: THE DAEMON DIED ({exc}):\n{tail(soak.workdir / 'daemon.log')}")
        finally:
            stop.set()
            stop_traffic.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{control_port}/control/stats") as r:
                    soak.heartbeat_stats = await r.json()
                await fetch_arrivals(soak, session)
    if soak.alive():
        await settle_health(soak)
    account(soak)
    if soak.daemon is not None:
        soak.hwm = memory_mib(soak.daemon.pid, "VmHWM") or 0.0
        with contextlib.suppress(ProcessLookupError):
            os.kill(soak.daemon.pid, signal.SIGCONT)
        stopping = time.monotonic()
        soak.stopping_at = time.time()
        soak.exit_code = soak.daemon.stop(signal.SIGTERM, timeout=60)
        soak.stop_seconds = time.monotonic() - stopping
    assert soak.log is not None
    soak.log.read()
    for fault in soak.faults:
        judge(soak, fault)


async def sleep_watching(soak: Soak, seconds: float) -> None:
    until = time.time() + max(0.0, seconds)
    while time.time() < until:
        soak.check_alive()
        await asyncio.sleep(min(1.0, max(0.0, until - time.time())))


async def fault_loop(soak: Soak, session: aiohttp.ClientSession) -> None:
    opts = soak.opts
    rng = random.Random(opts.seed)
    soak.soak_start = time.time()
    end = soak.soak_start + opts.minutes * 60
    cap = 0.6 * opts.fault_every
    deck: list[str] = []
    number = 0
    say(
        f"soak: {opts.minutes:g} min from {clock(soak.soak_start)} UTC, a fault every "
        f"{opts.fault_every:g} s from {{{', '.join(opts.faults)}}}, --seed {opts.seed}"
    )
    while True:
        due = soak.soak_start + opts.fault_every * (number + 0.5)
        if due >= end:
            break
        await sleep_watching(soak, due - time.time())
        if not deck:
            deck = list(opts.faults)
            rng.shuffle(deck)
        number += 1
        kind = deck.pop()
        hold, params = plan_hold(kind, rng, cap)
        fault = Fault(number, kind, hold, params)
        soak.faults.append(fault)
        say(
            f"  fault {number} {kind} at {clock(time.time())} UTC, hold {hold:.0f} s "
            f"{params or ''} ({load_average()})"
        )
        await inject(soak, fault, session)
        await wait_ready_again(soak, fault)
        after = (
            f"/readyz 200 {fault.ready_again - fault.cleared:.1f} s after it cleared"
            if fault.ready_again
            else f"/readyz not 200 within {opts.clear_within:g} s"
        )
        say(f"    held {fault.cleared - fault.started:.0f} s; {after}")
    await sleep_watching(soak, end - time.time())
    soak.soak_end = time.time()


async def drain(soak: Soak, session: aiohttp.ClientSession) -> None:
    """Until every trigger row has a delivery answered 2xx, or --drain."""
    started = time.time()
    until = started + soak.opts.drain
    say(f"soak: draining webhooks (at most {soak.opts.drain:g} s)")
    while True:
        soak.check_alive()
        await fetch_arrivals(soak, session)
        lost = await asyncio.to_thread(lost_triggers, soak.db, soak.arrivals)
        if lost is not None and not lost[0]:
            soak.drained_in = time.time() - started
            return
        if time.time() > until:
            return
        await asyncio.sleep(5.0)


async def settle_health(soak: Soak) -> None:
    """Wait (at most 2 intervals + the heartbeat timeout) for every subject to be up again: the
    last fault may have left devices unknown until their next check or heartbeat."""
    started = time.time()
    until = started + 2 * soak.opts.interval + soak.opts.heartbeat_timeout
    while True:
        soak.health_end = await asyncio.to_thread(health_counts, soak.db)
        total = sum(soak.health_end.values())
        up = sum(n for (_, health), n in soak.health_end.items() if health == "up")
        if (total and up == total) or time.time() > until or not soak.alive():
            soak.settled_in = time.time() - started if total and up == total else None
            return
        await asyncio.sleep(5.0)


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def lost_triggers(
    db: Path, arrivals: list[dict[str, Any]]
) -> tuple[list[tuple[int, str, int]], int] | None:
    """(trigger rows with no delivery answered 2xx, all trigger rows); a delivery matches a
    trigger by its type and its timeline event id."""
    answered = {(a["type"], a["event"]) for a in arrivals}
    try:
        with contextlib.closing(read_only(db)) as conn:
            rows = conn.execute("SELECT id, type, event_id FROM triggers ORDER BY id").fetchall()
    except sqlite3.Error:
        return None
    lost = [(i, t, e) for i, t, e in rows if (t, e) not in answered]
    return lost, len(rows)


def account(soak: Soak) -> None:
    """Tickets and triggers, from the SQLite file (read-only) at the end."""
    found = lost_triggers(soak.db, soak.arrivals)
    if found is not None:
        soak.lost, soak.triggers = found
    with contextlib.suppress(sqlite3.Error), contextlib.closing(read_only(soak.db)) as conn:
        soak.tickets = [
            (str(a), str(b), str(c), str(d), str(e))
            for a, b, c, d, e in conn.execute(
                "SELECT source, subject_type, subject_id, kind, opened_at FROM tickets"
            ).fetchall()
        ]
        soak.deliveries = Counter(
            {
                str(status): int(n)
                for status, n in conn.execute(
                    "SELECT status, count(*) FROM deliveries GROUP BY status"
                ).fetchall()
            }
        )
    with contextlib.suppress(OSError):
        soak.db_bytes = sum(
            p.stat().st_size for p in soak.store_dir.glob("tocsin.db*") if p.is_file()
        )


def health_text(counts: Counter[tuple[str, str]]) -> str:
    kinds: dict[str, list[str]] = {}
    for (kind, health), n in sorted(counts.items()):
        kinds.setdefault(kind, []).append(f"{health} {n}")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items()) or "(none)"


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Check:
    what: str
    value: str
    target: str
    ok: bool | None


def rss_windows(soak: Soak) -> tuple[list[Sample], list[Sample], str]:
    start = soak.monitor_started + soak.opts.warmup
    after = [s for s in soak.samples if s.at >= start]
    if not after:
        return [], [], "no samples"
    span = after[-1].at - after[0].at
    if span >= 30 * 60:
        first = [s for s in after if s.at <= after[0].at + 600]
        last = [s for s in after if s.at >= after[-1].at - 600]
        return first, last, "first vs last 10 minutes after warm-up"
    third = span / 3
    first = [s for s in after if s.at <= after[0].at + third]
    last = [s for s in after if s.at >= after[-1].at - third]
    return first, last, "first vs last third after warm-up"


def unresponsive(soak: Soak) -> tuple[int, float]:
    """/readyz polls left unanswered while the daemon was not SIGSTOPped (a stopped daemon
    cannot answer), and the longest run of them in seconds."""
    stopped = [(f.started, f.cleared + 3) for f in soak.faults if f.kind == "sigstop"]
    silent, longest, since = 0, 0.0, None
    for at, result in soak.readyz:
        if any(a <= at <= b for a, b in stopped):
            since = None
            continue
        if result == "no answer":
            silent += 1
            since = at if since is None else since
            longest = max(longest, at + 3 - since)
        else:
            since = None
    return silent, longest


def report(soak: Soak) -> list[Check]:
    opts = soak.opts
    checks: list[Check] = []
    say()
    say(f"== soak: {opts.subjects:,} subjects, {len(soak.faults)} faults, --seed {opts.seed} ==")
    alive = soak.died is None and soak.exit_code == 0
    checks.append(
        Check(
            "daemon alive throughout, clean stop",
            soak.died or f"alive; exit {soak.exit_code} in {soak.stop_seconds:.1f} s",
            "alive, exit 0",
            alive,
        )
    )
    first, last, how = rss_windows(soak)
    a, b = median([s.rss for s in first]), median([s.rss for s in last])
    growth = 100 * (b - a) / a if first and last and a else float("nan")
    say(
        f"daemon RSS ({how}, {len(first)} and {len(last)} samples every "
        f"{opts.sample_every:g} s): median {a:.1f} -> {b:.1f} MiB ({growth:+.1f}%); "
        f"VmHWM {soak.hwm:.0f} MiB"
    )
    if soak.samples:
        step = max(1, len(soak.samples) // 12)
        points = ", ".join(
            f"{(s.at - soak.monitor_started) / 60:.1f}m {s.rss:.0f}" for s in soak.samples[::step]
        )
        say(f"  VmRSS MiB over time (minutes after the monitor started): {points}")
    for label, before, after in (
        ("probe worker", [s.worker_rss for s in first], [s.worker_rss for s in last]),
        ("delivery process", [s.delivery_rss for s in first], [s.delivery_rss for s in last]),
    ):
        wa, wb = median(before), median(after)
        if not (wa or wb):
            continue
        worker_growth = 100 * (wb - wa) / wa if wa else float("nan")
        say(f"  {label} RSS: median {wa:.1f} -> {wb:.1f} MiB ({worker_growth:+.1f}%)")
        checks.append(
            Check(
                f"{label} RSS flat (median, " + how + ")",
                f"{wa:.1f} -> {wb:.1f} MiB ({worker_growth:+.1f}%)",
                f"<= +{opts.target_rss_growth:g}%",
                bool(first and last) and worker_growth <= opts.target_rss_growth,
            )
        )
    if len(soak.samples) > 1:
        s0, s1 = soak.samples[0], soak.samples[-1]
        say(f"  daemon CPU: {100 * (s1.cpu - s0.cpu) / (s1.at - s0.at):.1f}% of a core on average")
    checks.append(
        Check(
            "RSS flat (median, " + how + ")",
            f"{a:.1f} -> {b:.1f} MiB ({growth:+.1f}%)",
            f"<= +{opts.target_rss_growth:g}%",
            bool(first and last) and growth <= opts.target_rss_growth,
        )
    )
    false = [t for t in soak.tickets if t[1] == "device" and t[2].startswith(SUBJECT_PREFIXES)]
    caused = [t for t in soak.tickets if t not in false and t[0] != "workflow"]
    workflow = [t for t in soak.tickets if t[0] == "workflow"]
    say(
        f"tickets: {len(workflow)} workflow (the bench's own), {len(caused)} for subjects the "
        f"faults made fail, {len(false)} for fleet devices"
    )
    for source, stype, sid, kind, opened in [*caused, *false][:10]:
        say(f"  {opened} {source} {stype}:{sid} {kind}")
    checks.append(
        Check(
            "false tickets (fleet devices)",
            str(len(false)) + (f" ({', '.join(t[2] for t in false[:5])})" if false else ""),
            "0",
            not false,
        )
    )
    lost_kinds = Counter(t for _, t, _ in soak.lost)
    say(
        f"triggers: {soak.triggers} rows; deliveries by status {dict(soak.deliveries)}; "
        f"{len(soak.arrivals)} deliveries answered 2xx at the receiver; drained "
        + (f"in {soak.drained_in:.0f} s" if soak.drained_in is not None else "NOT in time")
    )
    checks.append(
        Check(
            "lost triggers (no delivery after the drain)",
            f"{len(soak.lost)} of {soak.triggers}" + (f" {dict(lost_kinds)}" if lost_kinds else ""),
            "0",
            not soak.lost and soak.triggers > 0,
        )
    )
    transient = Counter(
        e.fields.get("subject", "")
        for e in (soak.log.entries if soak.log else [])
        if e.fields.get("reason") == "failing"
    )
    fleet_transient = {s: n for s, n in transient.items() if "device:" in s}
    say(
        f"fleet devices seen unhealthy at some point (debounce started, no ticket): "
        f"{len(fleet_transient)}"
        + (f", e.g. {', '.join(list(fleet_transient)[:4])}" if fleet_transient else "")
    )
    say(
        f"heartbeat publisher: {soak.heartbeat_stats}; store files {soak.db_bytes / 2**20:.1f} MiB"
        f" on {soak.tmpfs_note}"
    )
    say(f"health after warm-up: {health_text(soak.health_start)}")
    say(f"health at the end:    {health_text(soak.health_end)}")
    total = sum(soak.health_end.values())
    up = sum(n for (_, health), n in soak.health_end.items() if health == "up")
    checks.append(
        Check(
            "every subject up again at the end",
            f"{up:,}/{total:,}"
            + (
                f" ({soak.settled_in:.0f} s after the drain)" if soak.settled_in is not None else ""
            ),
            f"all, within {2 * opts.interval + opts.heartbeat_timeout:g} s",
            bool(total) and up == total,
        )
    )
    api = Counter(f"{what} {result}" for _, what, result in soak.api_calls)
    say(f"workflow API calls: {dict(api)}")
    silent, longest = unresponsive(soak)
    say(
        f"/readyz unanswered (3 s timeout) outside SIGSTOP: {silent} of {len(soak.readyz)} polls; "
        f"longest stretch {longest:.0f} s"
    )
    checks.append(
        Check("longest /readyz silence outside SIGSTOP", f"{longest:.0f} s", "(info)", None)
    )

    say()
    say("== faults ==")
    say("| # | fault | at (s) | held s | logged by the daemon | cleared | /readyz while held |")
    say("|---|---|---:|---:|---|---|---|")
    for fault in soak.faults:
        at = fault.started - soak.soak_start
        logged = ", ".join(fault.logged) or (
            "**nothing expected**" if fault.bit else "(no effect: no write refused)"
        )
        ready = (
            f"readyz 200 +{fault.ready_again - fault.cleared:.0f} s"
            if fault.ready_again
            else "**readyz not 200**"
        )
        cleared = ready + "; " + (", ".join(fault.recovered) or "**no sign of recovery**")
        during = ", ".join(f"{k} x{v}" for k, v in fault.readyz_during.most_common())
        name = fault.kind + (
            f" (persistence {'on' if fault.params['persistence'] else 'off'})"
            if "persistence" in fault.params
            else ""
        )
        say(
            f"| {fault.number} | {name} | {at:.0f} | {fault.cleared - fault.started:.0f} | "
            f"{logged} | {cleared} | {during} |"
        )
    for fault in soak.faults:
        extras = [*fault.notes]
        if fault.others:
            extras.append(
                "other warnings/errors: "
                + "; ".join(f"{n} x {e}" for e, n in fault.others.most_common(5))
            )
        if fault.api:
            extras.append("workflow API: " + ", ".join(f"{k} x{v}" for k, v in fault.api.items()))
        for extra in extras:
            say(f"  {fault.number} {fault.kind}: {extra}")
    for kind in KINDS:
        mine = [f for f in soak.faults if f.kind == kind]
        if not mine:
            continue
        bit = [f for f in mine if f.bit]
        logged = sum(f.was_logged for f in bit)
        cleared = sum(f.did_clear for f in bit)
        idle = f"; {len(mine) - len(bit)} had no effect" if len(bit) < len(mine) else ""
        checks.append(
            Check(
                f"fault {kind}: logged / cleared",
                f"{logged}/{len(bit)} logged, {cleared}/{len(bit)} cleared{idle}",
                "all",
                (logged == len(bit) and cleared == len(bit)) if bit else None,
            )
        )
    if soak.log is not None:
        say()
        say(f"daemon log: {dict(soak.log.levels)}")
        loud = Counter(
            f"{e.level}: {e.event[:100]}"
            for e in soak.log.entries
            if e.level in ("warning", "error", "critical")
        )
        for event, count in loud.most_common(15):
            say(f"  {count} x {event}")
        for entry in soak.log.tracebacks[:5]:
            say(f"  traceback at {clock(entry.at)} ({entry.level}: {entry.event}):")
            text = first_and_last_lines(str(entry.fields["exception"]))
            say("    " + text.replace("\n", "\n    "))
        stuck = [e for e in soak.log.entries if e.event == "still running while stopping"]
        for entry in stuck[:10]:
            stack = entry.fields.get("stack") or []
            where = " <- ".join(str(f) for f in stack[:3]) if isinstance(stack, list) else stack
            say(f"  still running while stopping: {entry.fields.get('task')}: {where}")
        if soak.log.not_json:
            say(f"  {len(soak.log.not_json)} lines not JSON (stderr text, not the logger's):")
            for line in soak.log.not_json[:40]:
                say(f"    {line[:200]}")
        checks.append(
            Check("tracebacks in the daemon log", str(len(soak.log.tracebacks)), "", None)
        )
    return checks


# -- main ---------------------------------------------------------------------------------------


def run_hidden_role(argv: list[str]) -> None:
    role, rest = argv[1], argv[2:]
    if role == "http-devices":
        asyncio.run(sim.http_devices(int(rest[0]), int(rest[1])))
    elif role == "receiver":
        asyncio.run(receiver(int(rest[0])))
    elif role == "heartbeats":
        broker, control, devices, every, prefix, seed = rest
        asyncio.run(
            heartbeats(int(broker), int(control), int(devices), float(every), prefix, int(seed))
        )
    elif role == "lock":
        hold_lock(rest[0], float(rest[1]))
    else:
        raise SystemExit(f"unknown role {role}")


def main(argv: list[str]) -> int:
    begun = bench_start(argv, run_hidden_role, parse_args, "tocsin-soak-")
    if begun is None:
        return 0
    opts, workdir, children, started = begun
    say(
        f"bench_soak at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: --minutes {opts.minutes:g} "
        f"--subjects {opts.subjects} --seed {opts.seed}, {load_average()}, work folder {workdir}"
    )
    state = Soak(opts, workdir, children)
    try:
        asyncio.run(soak_phase(state))
    finally:
        if state.daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.daemon.pid, signal.SIGCONT)
        children.stop_all()
        if state.tmpfs:
            unmount(state.store_dir)
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    checks = report(state)
    say()
    say(f"== summary ({(time.time() - started) / 60:.1f} min, {load_average()} at the end) ==")
    say("| check | measured | target | |")
    say("|---|---|---|---|")
    for check in checks:
        mark = "info" if check.ok is None else ("PASS" if check.ok else "**FAIL**")
        say(f"| {check.what} | {check.value} | {check.target} | {mark} |")
    if opts.keep:
        say(f"kept {workdir}" + (" (the store's tmpfs is unmounted)" if state.tmpfs else ""))
    return 1 if any(c.ok is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
