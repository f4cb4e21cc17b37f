"""Benchmark: the daemon watching a simulated fleet of 10,000 subjects on this machine.

Requirement: 10,000 subjects (6,000 MQTT heartbeat devices, 2,000 HTTP, 2,000 SNMP) at a 30 s
interval: the daemon under one core on average and under 300 MB RSS; detection overhead
(ticket opened - failure time - debounce) under one interval + 2 s at p99; each probe type's
throughput at >= 80% of a bare library loop doing the same requests in the same run.

Two phases, every peer in a process of its own (so the daemon's CPU and memory are its own):

1. Capacity (the daemon at a 30 s interval only does ~67 HTTP/s, ~67 SNMP/s, ~200 MQTT msg/s,
   which says nothing of its capacity): in a client process, alternately, a bare library loop
   and the probe classes, as fast as they go, with the same concurrency, against the same
   peers:
     HTTP  bare: one aiohttp.ClientSession, 100 workers, GET + read.      probe: HttpProbe.check
           (make_http_session, 100 connections) over 2,000 device URLs.
     SNMP  bare: pysnmp v3arch get_cmd of sysUpTime.0, one SnmpEngine, one target per agent,
           50 workers.                                                     probe: SnmpProbe.check
           (2,000 probes sharing one engine, spread over the agents).
     MQTT  a raw-socket publisher floods mosquitto: marker `online`, N heartbeats round-robin
           over 10,000 topics (QoS 0), marker `offline`. bare: one aiomqtt subscriber on the
           10,000 topics counting messages. probe: a BrokerMonitor watching 10,000 heartbeat
           devices and a marker device (status topic). Both are timed from the marker's
           `online` to its `offline` (BrokerMonitor reports those edges through its sink; the
           broker delivers one publisher's messages in order, so the `offline` edge means
           all N heartbeats before it were handled): rate = N / drain time.
     PullScheduler: 10,000 trivial probes at a 1 s interval (75 x the fleet's pull rate): runs/s
           and lateness against each probe's exact due time (a seeded rng replays the
           scheduler's random first offsets).
2. The fleet: the demo's simulator (`tocsin.demo.SimulatedSite`, as `tocsin demo` runs it) in a
   process of its own for the HTTP devices (503 for those switched to failing; every answer
   closes its connection, so each check opens a new TCP connection), snmpd agents on loopback
   UDP ports (2,000 SNMP subjects share 4 agents: 3 share 1,950, the 4th has the 50 that fail
   when it is killed), mosquitto and a publisher process sending each MQTT device's heartbeat
   once per interval at a random phase. The daemon is
   `python -m tocsin run --config <generated>` (SQLite in a temp folder). Its CPU time
   (/proc/PID/stat) and VmRSS are sampled every 2 s. After warm-up, failures are injected at
   a recorded wall time: 50 HTTP devices answer 503, the 4th snmpd is killed, 100 MQTT devices
   stop their heartbeats. Tickets come from the API (GET /api/v1/orgs/fleet/tickets?state=open
   with a read token). Overhead = opened_at - failure time - debounce, where the failure time
   of an MQTT heartbeat device is its last heartbeat sent + heartbeat_timeout (the earliest
   moment the silence is a failure). The daemon's log splits each overhead into "seen
   unhealthy" (waiting for the next check + the check itself) and "opened after debounce"
   (the monitor's tick and the store).

Exit status 1 when a target is missed. Run from the repository root:
    .venv/bin/python bench/bench_fleet.py            # ~5.5 minutes
    .venv/bin/python bench/bench_fleet.py --quick    # ~1.5 minutes, 1,000 subjects, 10 s interval
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from fleet import capacity, sim
from fleet.daemon import (
    MQTT_PREFIX,
    ORG,
    TOKEN,
    Fleet,
    fleet_config,
    health_counts,
    open_ticket_count,
    parse_time,
    read_log,
)
from fleet.peers import (
    Child,
    Children,
    bench_start,
    free_port,
    start_mosquitto,
    start_snmpd,
    tcp_ready,
)
from fleet.procstat import (
    PROBE_WORKER,
    child_running,
    cpu_seconds,
    load_average,
    machine_busy_seconds,
    memory_mib,
    udp_receive_errors,
)
from fleet.profile import record_command, summarize

# The bare loops on this machine, per shared/reference/peers-and-libraries.md.
REFERENCE = {"http": 14_300.0, "snmp": 1_860.0, "mqtt": 23_500.0}
UNITS = {"http": "GET/s", "snmp": "GET/s", "mqtt": "msg/s"}

FULL: dict[str, Any] = {
    "http": 2000,
    "snmp": 2000,
    "mqtt": 6000,
    "fail_http": 50,
    "fail_snmp": 50,
    "fail_mqtt": 100,
    "snmp_agents": 4,
    "interval": 30.0,
    "debounce": 60.0,
    "heartbeat_timeout": 60.0,
    "warmup": 45.0,
    "window": 150.0,
    "inject_after": 30.0,
    "cap_duration": 3.0,
    "cap_warmup": 1.0,
    "cap_reps": 3,
    "mqtt_topics": 10_000,
    "mqtt_count": 100_000,
    "sched_subjects": 10_000,
    "sched_interval": 1.0,
    "sched_duration": 10.0,
}
QUICK: dict[str, Any] = {
    **FULL,
    "http": 200,
    "snmp": 200,
    "mqtt": 600,
    "fail_http": 10,
    "fail_snmp": 10,
    "fail_mqtt": 20,
    "snmp_agents": 2,
    "interval": 10.0,
    "debounce": 10.0,
    "heartbeat_timeout": 20.0,
    "warmup": 15.0,
    "window": 30.0,
    "inject_after": 5.0,
    "cap_duration": 2.0,
    "cap_warmup": 0.5,
    "cap_reps": 1,
    "mqtt_topics": 2000,
    "mqtt_count": 30_000,
    "sched_duration": 4.0,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="a ~2 minute smoke run: 1,000 subjects, 10 s interval")
    add("--http", type=int, help="HTTP devices (2000)")
    add("--snmp", type=int, help="SNMP devices (2000)")
    add("--mqtt", type=int, help="MQTT heartbeat devices (6000)")
    add("--fail-http", type=int, help="HTTP devices switched to 503 (50)")
    add("--fail-snmp", type=int, help="SNMP devices on the agent that is killed (50)")
    add("--fail-mqtt", type=int, help="MQTT devices whose heartbeats stop (100)")
    add("--snmp-agents", type=int, help="snmpd processes, the last one is killed (4)")
    add("--interval", type=float, help="monitor interval and heartbeat period, s (30)")
    add("--debounce", type=float, help="s (60)")
    add("--heartbeat-timeout", type=float, help="s (60)")
    add("--http-timeout", type=float, default=5.0, help="s (5)")
    add("--snmp-timeout", type=float, default=1.0, help="s per try (1, the probe's default)")
    add("--snmp-retries", type=int, default=1, help="(1, the probe's default)")
    add("--max-concurrency", type=int, default=256, help="[monitor] max_concurrency (256)")
    add(
        "--per-host",
        type=int,
        default=256,
        help="[monitor] per_host_concurrency (256: every simulated device is on 127.0.0.1)",
    )
    add("--warmup", type=float, help="s after the monitor started before the window (45)")
    add("--window", type=float, help="minimum steady-state window, s (150)")
    add("--inject-after", type=float, help="s into the window when failures start (30)")
    add("--sample-every", type=float, default=2.0, help="CPU/RSS sampling period, s (2)")
    add("--cap-duration", type=float, help="timed seconds per capacity repetition (3)")
    add("--cap-warmup", type=float, help="untimed seconds before each repetition (1)")
    add("--cap-reps", type=int, help="bare/probe repetitions per type (3)")
    add("--http-concurrency", type=int, default=100)
    add("--snmp-concurrency", type=int, default=50)
    add("--mqtt-topics", type=int, help="topics of the MQTT flood (10000)")
    add("--mqtt-count", type=int, help="messages per MQTT flood (100000)")
    add("--sched-subjects", type=int, help="trivial probes in the scheduler test (10000)")
    add("--sched-interval", type=float, help="s (1)")
    add("--sched-duration", type=float, help="s (10)")
    add("--skip-capacity", action="store_true")
    add("--skip-fleet", action="store_true")
    add(
        "--pull-probes",
        choices=["auto", "worker", "inline"],
        default="auto",
        help="the daemon's [monitor] pull_probes (auto: a worker from 2,000 pull subjects)",
    )
    parser.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="asyncio",
        help="the daemon's [server] event_loop (asyncio)",
    )
    add("--profile", type=int, metavar="SECONDS", help="py-spy the daemon for SECONDS of window")
    add("--target-cpu", type=float, default=100.0, help="%% of one core, average (100)")
    add("--target-rss-mb", type=float, default=300.0, help="MB (10^6 bytes) peak (300)")
    add("--target-ratio", type=float, default=0.8, help="probe/bare throughput (0.8)")
    add("--slack", type=float, default=2.0, help="bound = interval + SLACK s (2)")
    add("--seed", type=int, default=7)
    add("--dir", type=Path, help="parent of the temporary folder")
    add("--keep", action="store_true", help="keep the temporary folder (logs, config, db)")
    opts = parser.parse_args(argv)
    defaults = QUICK if opts.quick else FULL
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.fail_snmp >= opts.snmp or opts.snmp_agents < 2:
        parser.error("need --snmp-agents >= 2 and --fail-snmp < --snmp")
    return opts


# -- small helpers --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log, for an error message (the work folder is removed at exit)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path} unreadable)"


def say(text: str = "") -> None:
    print(text, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


# -- peers ----------------------------------------------------------------------------------


@dataclass
class Peers:
    mosquitto: Child
    broker_port: int
    http: Child
    http_port: int
    agents: list[tuple[Child, int]]  # snmpd, port; the last one is killed in the fleet phase

    def pids(self) -> dict[str, int]:
        found = {"mosquitto": self.mosquitto.pid, "http-devices": self.http.pid}
        for i, (agent, _) in enumerate(self.agents):
            found[f"snmpd-{i}"] = agent.pid
        return found


def start_peers(children: Children, agents: int, http_devices: int) -> Peers:
    broker_port = free_port()
    mosquitto = start_mosquitto(children, broker_port)
    http_port = free_port()
    http = children.role("http-devices", "http-devices", str(http_port), str(http_devices))
    deadline = time.monotonic() + 20
    while not tcp_ready(http_port):
        if not http.running or time.monotonic() > deadline:
            raise SystemExit(f"the simulated HTTP site did not start; see {http.log.name}")
        time.sleep(0.05)
    snmpds = []
    for i in range(agents):
        port = free_port(socket.SOCK_DGRAM)
        snmpds.append((start_snmpd(children, f"snmpd-{i}", port), port))
    return Peers(mosquitto, broker_port, http, http_port, snmpds)


# -- phase 1: capacity ------------------------------------------------------------------------


def run_role(children: Children, name: str, role: str, spec: dict[str, Any]) -> list[Any]:
    child = children.role(name, role, json.dumps(spec), stdout=subprocess.PIPE)
    assert child.process.stdout is not None
    out = child.process.stdout.read().decode()
    code = child.process.wait()
    child.log.close()
    if code != 0 or not out.strip():
        raise SystemExit(f"{role} failed (exit {code}); see {child.log.name}")
    result: list[Any] = json.loads(out.strip().splitlines()[-1])
    return result


@dataclass
class Capacity:
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scheduler: dict[str, Any] | None = None

    def rates(self, kind: str, mode: str, key: str = "rate") -> list[float]:
        """Operations per second ("rate") or per CPU-second of the client ("per_cpu")."""
        runs = [r for r in self.runs.get(kind, []) if r["mode"] == mode]
        if key == "per_cpu":
            return [r["rate"] * 100 / r["cpu"] if r.get("cpu") else 0.0 for r in runs]
        return [r[key] for r in runs]

    def pair_ratios(self, kind: str, key: str = "rate") -> list[float]:
        """probe / bare of each repetition (a bare run and the probe run right after it)."""
        bare, probe = self.rates(kind, "bare", key), self.rates(kind, "probe", key)
        return [p / b for b, p in zip(bare, probe, strict=False) if b]

    def ratio(self, kind: str) -> float:
        bare, probe = median(self.rates(kind, "bare")), median(self.rates(kind, "probe"))
        return probe / bare if bare else 0.0


def capacity_phase(opts: argparse.Namespace, children: Children, peers: Peers) -> Capacity:
    result = Capacity()
    common = {"reps": opts.cap_reps, "warmup": opts.cap_warmup, "duration": opts.cap_duration}
    say(f"capacity: HTTP ({load_average()})")
    result.runs["http"] = run_role(
        children,
        "cap-http",
        "cap-http",
        {
            **common,
            "base": f"http://127.0.0.1:{peers.http_port}",
            "devices": opts.http,
            "concurrency": opts.http_concurrency,
            "pids": [peers.http.pid],
        },
    )
    say(f"capacity: SNMP ({load_average()})")
    result.runs["snmp"] = run_role(
        children,
        "cap-snmp",
        "cap-snmp",
        {
            **common,
            "ports": [port for _, port in peers.agents],
            "devices": opts.snmp,
            "concurrency": opts.snmp_concurrency,
            "pids": [agent.pid for agent, _ in peers.agents],
        },
    )
    say(f"capacity: MQTT ({load_average()})")
    result.runs["mqtt"] = run_role(
        children,
        "cap-mqtt",
        "cap-mqtt",
        {
            "reps": opts.cap_reps,
            "port": peers.broker_port,
            "topics": opts.mqtt_topics,
            "count": opts.mqtt_count,
            "pids": [peers.mosquitto.pid],
        },
    )
    say(f"capacity: PullScheduler ({load_average()})")
    result.scheduler = run_role(
        children,
        "cap-scheduler",
        "cap-scheduler",
        {
            "subjects": opts.sched_subjects,
            "interval": opts.sched_interval,
            "duration": opts.sched_duration,
        },
    )[0]
    return result


# -- phase 2: the fleet -----------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    daemon_cpu: float
    daemon_rss: float
    others: dict[str, float]
    busy: float
    total: float


@dataclass
class Failure:
    kind: str
    subject: str
    failed_at: float
    seen_at: float | None = None  # the daemon's log: first unhealthy observation handled
    opened_at: float | None = None


@dataclass
class FleetRun:
    fleet: Fleet
    spawned_at: float = 0.0
    started_at: float = 0.0  # "health monitor started"
    rss_at_start: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)
    injected_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    health_before: Counter[tuple[str, str]] = field(default_factory=Counter)
    health_after: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # tickets of subjects never failed
    hwm: float = 0.0
    stop_seconds: float = 0.0
    exit_code: int | None = None
    heartbeat_stats: dict[str, Any] = field(default_factory=dict)
    http_stats: dict[str, Any] = field(default_factory=dict)
    log_levels: Counter[str] = field(default_factory=Counter)
    log_others: Counter[str] = field(default_factory=Counter)
    profile: str | None = None
    worker_profile: str | None = None
    worker: int | None = None  # the daemon's probe worker process, when it has one
    worker_rss_at_start: float = 0.0
    worker_hwm: float = 0.0
    udp_drops: int = 0  # datagrams dropped for a full receive buffer in the window


async def sampler(
    run: FleetRun, pid: int, others: dict[str, int], every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        cpu = cpu_seconds(pid)
        if cpu is None:
            return
        busy, total = machine_busy_seconds()
        previous = run.samples[-1].others if run.samples else {}
        shares = {}
        for name, other in others.items():
            used = cpu_seconds(other)  # None once it is gone (the killed agent): keep its last
            shares[name] = used if used is not None else previous.get(name, 0.0)
        run.samples.append(Sample(time.time(), cpu, memory_mib(pid) or 0.0, shares, busy, total))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def api_tickets(session: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    tickets: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"state": "open", "limit": "200", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{base}/api/v1/orgs/{ORG}/tickets", params=params) as response:
            body = await response.json()
            if response.status != 200:
                raise SystemExit(f"ticket listing failed: {response.status} {body}")
        tickets += body["tickets"]
        cursor = body.get("next_cursor")
        if not cursor:
            return tickets


async def wait_started(daemon: Child, log: Path, deadline: float) -> float:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if not daemon.running:
            raise SystemExit(f"the daemon exited early:\n{tail(log)}")
        started = read_log(log).monitor_started
        if started is not None:
            return started
        await asyncio.sleep(0.5)
    raise SystemExit(f"the monitor did not start within {deadline:g} s:\n{tail(log)}")


async def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def fleet_phase(
    opts: argparse.Namespace, children: Children, peers: Peers, workdir: Path
) -> FleetRun:
    rng = random.Random(opts.seed)
    # SNMP subjects: the healthy agents share what the last (killed) agent does not have.
    healthy_agents = peers.agents[:-1]
    share, extra = divmod(opts.snmp - opts.fail_snmp, len(healthy_agents))
    snmp_ports = [(port, share + (i < extra)) for i, (_, port) in enumerate(healthy_agents)]
    snmp_ports.append((peers.agents[-1][1], opts.fail_snmp))
    listen = free_port()
    db = workdir / "tocsin.db"
    http_base = f"http://127.0.0.1:{peers.http_port}"
    text, fleet = fleet_config(
        db=db,
        listen_port=listen,
        http_base=http_base,
        http_count=opts.http,
        snmp_ports=snmp_ports,
        broker_port=peers.broker_port,
        mqtt_count=opts.mqtt,
        interval=opts.interval,
        debounce=opts.debounce,
        heartbeat_timeout=opts.heartbeat_timeout,
        http_timeout=opts.http_timeout,
        snmp_timeout=opts.snmp_timeout,
        snmp_retries=opts.snmp_retries,
        max_concurrency=opts.max_concurrency,
        per_host=opts.per_host,
        event_loop=opts.event_loop,
        pull_probes=opts.pull_probes,
    )
    config = workdir / "fleet.toml"
    config.write_text(text)
    run = FleetRun(fleet)
    say(
        f"fleet: {opts.mqtt:,} MQTT + {opts.http:,} HTTP + {opts.snmp:,} SNMP subjects "
        f"(SNMP agents: {', '.join(str(n) for _, n in snmp_ports)} subjects), "
        f"config {len(text) / 1e6:.1f} MB"
    )

    control_port = free_port()
    publisher = children.role(
        "heartbeats",
        "heartbeats",
        *(str(peers.broker_port), str(control_port), str(opts.mqtt)),
        *(str(opts.interval), MQTT_PREFIX, str(opts.seed)),
    )
    deadline = time.monotonic() + 20
    while not tcp_ready(control_port):
        if not publisher.running or time.monotonic() > deadline:
            raise SystemExit(f"the heartbeat publisher did not start; see {publisher.log.name}")
        await asyncio.sleep(0.05)

    # The capacity loops kept their connections alive; the fleet's checks each open a new one,
    # as checks of 2,000 separate hosts every 30 s would.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http_base}/control/connections", json={"close": True}) as response,
    ):
        response.raise_for_status()

    run.spawned_at = time.time()
    daemon = children.spawn(
        "daemon", [sys.executable, "-m", "tocsin", "run", "--config", str(config)]
    )
    log = workdir / "daemon.log"
    run.started_at = await wait_started(daemon, log, deadline=180)
    run.rss_at_start = memory_mib(daemon.pid) or 0.0
    run.worker = child_running(daemon.pid, PROBE_WORKER)
    if run.worker is not None:
        run.worker_rss_at_start = memory_mib(run.worker) or 0.0
        say(f"fleet: the daemon's probe worker is pid {run.worker}")
    say(
        f"fleet: daemon pid {daemon.pid}, monitor started {run.started_at - run.spawned_at:.1f} s "
        f"after spawn, VmRSS {run.rss_at_start:.0f} MiB; warm-up {opts.warmup:g} s"
    )
    base = f"http://127.0.0.1:{listen}"
    others = {**peers.pids(), "heartbeats": publisher.pid, "bench": os.getpid()}
    if run.worker is not None:
        others[WORKER] = run.worker
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(
        sampler(run, daemon.pid, others, opts.sample_every, stop_sampling)
    )
    profiler: Child | None = None
    worker_profiler: Child | None = None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            window_start = run.started_at + opts.warmup
            await sleep_until(window_start)
            udp_before = udp_receive_errors()
            if opts.profile:
                output = workdir / "daemon.pyspy.txt"
                profiler = children.spawn(
                    "py-spy", record_command(daemon.pid, opts.profile, output)
                )
                if run.worker is not None:
                    worker_profiler = children.spawn(
                        "py-spy-worker",
                        record_command(run.worker, opts.profile, workdir / "worker.pyspy.txt"),
                    )
            await sleep_until(window_start + opts.inject_after)
            run.health_before = health_counts(db)
            await inject(opts, run, fleet, peers, control_port, session, rng)
            say(
                f"fleet: failures injected at {clock(run.injected_at)} "
                f"({load_average()}); waiting for tickets"
            )
            expected = len(run.failures)
            bound = opts.interval + opts.slack
            give_up = run.injected_at + opts.interval + opts.heartbeat_timeout
            give_up += opts.debounce + bound + 15
            window_end = window_start + opts.window
            while True:
                now = time.time()
                found = open_ticket_count(db)
                if (found >= expected or now > give_up) and now >= window_end:
                    break
                if not daemon.running:
                    raise SystemExit(f"the daemon died:\n{tail(log)}")
                await asyncio.sleep(2)
            run.window = (window_start, time.time())
            run.udp_drops = udp_receive_errors() - udp_before
            tickets = await api_tickets(session, base)
            run.health_after = health_counts(db)
            async with session.get(f"http://127.0.0.1:{control_port}/control/stats") as r:
                run.heartbeat_stats = await r.json()
            async with session.get(f"{http_base}/control/stats") as r:
                run.http_stats = await r.json()
    finally:
        stop_sampling.set()
        await sampling
        run.hwm = memory_mib(daemon.pid, "VmHWM") or 0.0
        if run.worker is not None:
            run.worker_hwm = memory_mib(run.worker, "VmHWM") or 0.0
        stopping = time.monotonic()
        run.exit_code = daemon.stop(signal.SIGTERM, timeout=30)
        run.stop_seconds = time.monotonic() - stopping
        for each in (profiler, worker_profiler):
            if each is not None:
                each.stop(signal.SIGINT, timeout=10)

    by_subject = {f.subject: f for f in run.failures}
    for ticket in tickets:
        subject = ticket["subject"]["id"]
        failure = by_subject.get(subject)
        if failure is None:
            run.unexpected.append(subject)
        else:
            failure.opened_at = parse_time(ticket["opened_at"])
    daemon_log = read_log(log)
    for failure in run.failures:
        failure.seen_at = daemon_log.failing_at.get(failure.subject)
    run.log_levels, run.log_others = daemon_log.levels, daemon_log.others
    if opts.profile:
        run.profile = summarize(workdir / "daemon.pyspy.txt")
        if run.worker is not None:
            run.worker_profile = summarize(workdir / "worker.pyspy.txt")
    return run


async def inject(
    opts: argparse.Namespace,
    run: FleetRun,
    fleet: Fleet,
    peers: Peers,
    control_port: int,
    session: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    http_ids = sorted(rng.sample(range(opts.http), opts.fail_http))
    mqtt_ids = sorted(rng.sample(range(opts.mqtt), opts.fail_mqtt))
    run.injected_at = time.time()
    async with session.post(
        f"http://127.0.0.1:{peers.http_port}/control/fail", json={"ids": http_ids}
    ) as response:
        at = (await response.json())["at"]
    run.failures += [Failure("http", fleet.http[n], at) for n in http_ids]

    agent, port = peers.agents[-1]
    agent.stop(signal.SIGKILL)
    at = agent.stopped_at or time.time()
    run.failures += [Failure("snmp", s, at) for s, p in fleet.snmp.items() if p == port]

    async with session.post(
        f"http://127.0.0.1:{control_port}/control/stop", json={"ids": mqtt_ids}
    ) as response:
        last_sent = (await response.json())["last_sent"]
    for n in mqtt_ids:
        sent = last_sent.get(str(n))
        if sent is None:
            raise SystemExit(f"MQTT device {n} never sent a heartbeat before it was stopped")
        run.failures.append(Failure("mqtt", fleet.mqtt[n], sent + opts.heartbeat_timeout))


# -- the report -------------------------------------------------------------------------------


def cpu_figures(samples: list[Sample], start: float, end: float) -> tuple[float, float, float]:
    """(average, max over one sampling period, max over ~10 s) in % of one core."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return float("nan"), float("nan"), float("nan")
    first, last = inside[0], inside[-1]
    avg = 100 * (last.daemon_cpu - first.daemon_cpu) / (last.at - first.at)
    steps = [
        100 * (b.daemon_cpu - a.daemon_cpu) / (b.at - a.at) for a, b in itertools.pairwise(inside)
    ]
    tens = []
    for i, a in enumerate(inside):
        for b in inside[i + 1 :]:
            if b.at - a.at >= 9.9:
                tens.append(100 * (b.daemon_cpu - a.daemon_cpu) / (b.at - a.at))
                break
    return avg, max(steps), max(tens) if tens else float("nan")


WORKER = "probe worker"


def others_cpu(samples: list[Sample], start: float, end: float) -> tuple[dict[str, float], float]:
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return {}, float("nan")
    first, last = inside[0], inside[-1]
    span = last.at - first.at
    shares = {name: 100 * (last.others[name] - first.others[name]) / span for name in first.others}
    cores = os.cpu_count() or 1
    machine = 100 * cores * (last.busy - first.busy) / max(1e-9, last.total - first.total)
    return shares, machine


@dataclass
class Check:
    what: str
    value: str
    target: str
    ok: bool | None  # None: informational


def report(
    opts: argparse.Namespace, capacity: Capacity | None, run: FleetRun | None
) -> list[Check]:
    checks: list[Check] = []
    bound = opts.interval + opts.slack
    if run is not None:
        start, end = run.window
        avg, peak, peak10 = cpu_figures(run.samples, start, end)
        quiet = cpu_figures(run.samples, start, run.injected_at)[0]
        failing = cpu_figures(run.samples, run.injected_at, end)[0]
        shares, machine = others_cpu(run.samples, start, end)
        rss = max((s.daemon_rss for s in run.samples), default=0.0)
        say()
        say(f"== fleet window {clock(start)}-{clock(end)} UTC ({end - start:.0f} s) ==")
        say(
            f"daemon CPU: avg {avg:.1f}% of one core (before failures {quiet:.1f}%, "
            f"after {failing:.1f}%), max {peak:.1f}% over {opts.sample_every:g} s, "
            f"{peak10:.1f}% over 10 s"
        )
        say(
            "other processes in the run (% of one core): "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(shares.items()))
        )
        ours = avg + sum(shares.values())
        say(
            f"whole machine busy: {machine:.0f}% of one core ({os.cpu_count()} cores); "
            f"processes outside this benchmark: ~{max(0.0, machine - ours):.0f}%"
        )
        say(
            f"daemon memory: VmRSS {run.rss_at_start:.0f} MiB when the monitor started, max "
            f"{rss:.0f} MiB sampled, VmHWM (peak) {run.hwm:.0f} MiB = {run.hwm * 1.048576:.0f} MB"
        )
        say(f"daemon stop: exit {run.exit_code} after {run.stop_seconds:.1f} s")
        say(f"UDP datagrams dropped for a full receive buffer in the window: {run.udp_drops:,}")
        checks.append(
            Check(
                "daemon CPU, average",
                f"{avg:.1f}% of a core",
                f"< {opts.target_cpu:g}%",
                avg < opts.target_cpu,
            )
        )
        checks.append(Check("daemon CPU, max 10 s", f"{peak10:.1f}% of a core", "", None))
        checks.append(
            Check(
                "daemon RSS, peak (VmHWM)",
                f"{run.hwm * 1.048576:.0f} MB",
                f"< {opts.target_rss_mb:g} MB",
                run.hwm * 1.048576 < opts.target_rss_mb,
            )
        )
        if run.worker is not None:
            worker = shares.get(WORKER, float("nan"))
            say(
                f"probe worker: CPU avg {worker:.1f}% of one core; VmRSS "
                f"{run.worker_rss_at_start:.0f} MiB at start, VmHWM {run.worker_hwm:.0f} MiB"
            )
            checks.append(
                Check(
                    "probe worker CPU, average",
                    f"{worker:.1f}% of a core",
                    f"< {opts.target_cpu:g}%",
                    worker < opts.target_cpu,
                )
            )
            checks.append(
                Check(
                    "probe worker RSS, peak (VmHWM)",
                    f"{run.worker_hwm * 1.048576:.0f} MB",
                    f"< {opts.target_rss_mb:g} MB",
                    run.worker_hwm * 1.048576 < opts.target_rss_mb,
                )
            )
            checks.append(
                Check(
                    "daemon + worker: CPU avg, RSS peaks summed",
                    f"{avg + worker:.1f}% of a core, "
                    f"{(run.hwm + run.worker_hwm) * 1.048576:.0f} MB",
                    "",
                    None,
                )
            )
        say()
        say("health before the failures (subject_states): " + health_text(run.health_before))
        say("health at the end:                            " + health_text(run.health_after))
        say(f"heartbeat publisher: {run.heartbeat_stats}")
        say(f"simulated HTTP site (answers since it started): {run.http_stats}")
        say()
        say(
            f"detection overhead = opened_at - failure - debounce ({opts.debounce:g} s); "
            f"bound interval + {opts.slack:g} s = {bound:g} s"
        )
        say(
            "| type | failed | tickets | p50 s | p99 s | max s | seen unhealthy after "
            "(p50/max) | opened after debounce (p50/max) |"
        )
        say("|---|---:|---:|---:|---:|---:|---:|---:|")
        for kind in ("http", "snmp", "mqtt"):
            failures = [f for f in run.failures if f.kind == kind]
            done = [f for f in failures if f.opened_at is not None]
            over = [f.opened_at - f.failed_at - opts.debounce for f in done if f.opened_at]
            seen = [f.seen_at - f.failed_at for f in done if f.seen_at]
            lag = [
                f.opened_at - f.seen_at - opts.debounce for f in done if f.seen_at and f.opened_at
            ]
            p99 = percentile(over, 0.99)
            say(
                f"| {kind} | {len(failures)} | {len(done)} | {median(over):.1f} | {p99:.1f} | "
                f"{max(over, default=float('nan')):.1f} | "
                f"{median(seen):.1f} / {max(seen, default=float('nan')):.1f} | "
                f"{median(lag):.2f} / {max(lag, default=float('nan')):.2f} |"
            )
            checks.append(
                Check(
                    f"detection overhead {kind.upper()} p99",
                    f"{p99:.1f} s (p50 {median(over):.1f}, max "
                    f"{max(over, default=float('nan')):.1f}; {len(done)}/{len(failures)})",
                    f"< {bound:g} s, all",
                    bool(over) and p99 < bound and len(done) == len(failures),
                )
            )
        checks.append(
            Check(
                "tickets for subjects never failed",
                str(len(run.unexpected))
                + (f" ({', '.join(run.unexpected[:5])})" if run.unexpected else ""),
                "0",
                not run.unexpected,
            )
        )
        say()
        say(f"daemon log lines by level: {dict(run.log_levels)}")
        for line, count in run.log_others.most_common(10):
            say(f"  {count} x {line}")
        if run.profile:
            say()
            say("== py-spy profile of the daemon ==")
            say(run.profile)
        if run.worker_profile:
            say()
            say("== py-spy profile of the probe worker ==")
            say(run.worker_profile)
    if capacity is not None:
        say()
        say("== capacity: probe classes beside bare library loops, same run ==")
        say(
            "| type | mode | rate per rep | median | client CPU % | peer CPU % "
            "| whole machine CPU % | reference |"
        )
        say("|---|---|---|---:|---|---|---|---:|")
        for kind in ("http", "snmp", "mqtt"):
            for mode in ("bare", "probe", "bare+create"):
                reps = [r for r in capacity.runs.get(kind, []) if r["mode"] == mode]
                if not reps:
                    continue

                def column(key: str, reps: list[dict[str, Any]] = reps) -> str:
                    return ", ".join(f"{r.get(key, 0):.0f}" for r in reps)

                rates = ", ".join(f"{r['rate']:,.0f}" for r in reps)
                ref = f"{REFERENCE[kind]:,.0f}" if mode == "bare" else ""
                say(
                    f"| {kind} | {mode} | {rates} | {median([r['rate'] for r in reps]):,.0f} "
                    f"{UNITS[kind]} | {column('cpu')} | {column('peers_cpu')} "
                    f"| {column('machine_cpu')} | {ref} |"
                )
        say(
            "(peer: the simulated HTTP site's process, the snmpd agents, mosquitto; whole "
            "machine: 200% = both cores busy, other sessions' work included; snmp bare+create: "
            "the bare loop creating a UdpTransportTarget per GET as SnmpProbe does, informational)"
        )
        for r in capacity.runs.get("mqtt", []):
            say(
                f"  mqtt {r['mode']}: {r.get('received')} messages drained in "
                f"{r.get('drain_s', 0):.2f} s; the publisher had written the whole flood in "
                f"{1000 * r.get('flood_written_s', 0):.0f} ms"
            )
        for r in [*capacity.runs.get("http", []), *capacity.runs.get("snmp", [])]:
            if r.get("errors"):
                say(f"  errors: {r['mode']} {r['errors']}")
        for kind in ("http", "snmp", "mqtt"):
            pairs = capacity.pair_ratios(kind)
            per_cpu = capacity.pair_ratios(kind, "per_cpu")
            bare = median(capacity.rates(kind, "bare"))
            probe = median(capacity.rates(kind, "probe"))
            ratio = median(pairs)
            say(
                f"  {kind}: probe/bare per adjacent pair "
                f"{', '.join(f'{p:.2f}' for p in pairs)} (median {ratio:.2f}); "
                f"per client CPU-second {', '.join(f'{p:.2f}' for p in per_cpu)} "
                f"(median {median(per_cpu):.2f}); bare / reference {bare / REFERENCE[kind]:.2f}"
            )
            checks.append(
                Check(
                    f"throughput {kind.upper()} probe / bare",
                    f"{probe:,.0f} / {bare:,.0f} {UNITS[kind]} (medians); median pair "
                    f"ratio {ratio:.2f} (per CPU-second {median(per_cpu):.2f})",
                    f">= {opts.target_ratio:.2f}",
                    None if opts.quick else ratio >= opts.target_ratio,
                )
            )
        if capacity.scheduler:
            s = capacity.scheduler
            say()
            say(
                f"PullScheduler: {s['subjects']:,} trivial probes every {s['interval']:g} s: "
                f"{s['rate']:,.0f} runs/s of {s['expected_rate']:,.0f} due; lateness p50 "
                f"{s['late_p50_ms']:.1f} ms, p99 {s['late_p99_ms']:.1f} ms, max "
                f"{s['late_max_ms']:.1f} ms; {s['cpu']:.0f}% of a core"
            )
            checks.append(
                Check(
                    "PullScheduler, 10k x 1 s: runs/s, p99 late",
                    f"{s['rate']:,.0f}/{s['expected_rate']:,.0f}, {s['late_p99_ms']:.0f} ms",
                    "(informational)",
                    None,
                )
            )
    return checks


def health_text(counts: Counter[tuple[str, str]]) -> str:
    kinds: dict[str, list[str]] = {}
    for (kind, health), n in sorted(counts.items()):
        kinds.setdefault(kind, []).append(f"{health} {n}")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items()) or "(none)"


# -- main -------------------------------------------------------------------------------------


def run_hidden_role(argv: list[str]) -> None:
    role, rest = argv[1], argv[2:]
    if role == "http-devices":
        asyncio.run(sim.http_devices(int(rest[0]), int(rest[1])))
    elif role == "heartbeats":
        broker, control, devices, every, prefix, seed = rest
        asyncio.run(
            sim.heartbeats(int(broker), int(control), int(devices), float(every), prefix, int(seed))
        )
    elif role == "flood":
        port, topics, count, prefix, marker = rest
        sim.flood(int(port), int(topics), int(count), prefix, marker)
    elif role in capacity.ROLES:
        capacity.run_role(role, rest[0])
    else:
        raise SystemExit(f"unknown role {role}")


def main(argv: list[str]) -> int:
    begun = bench_start(argv, run_hidden_role, parse_args, "tocsin-fleet-")
    if begun is None:
        return 0
    opts, workdir, children, started = begun
    say(
        f"bench_fleet {'--quick ' if opts.quick else ''}at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,"
        f" {load_average()}, work folder {workdir}"
    )
    capacity_result: Capacity | None = None
    run: FleetRun | None = None
    try:
        peers = start_peers(children, opts.snmp_agents, opts.http)
        if not opts.skip_capacity:
            capacity_result = capacity_phase(opts, children, peers)
        if not opts.skip_fleet:
            run = asyncio.run(fleet_phase(opts, children, peers, workdir))
    finally:
        children.stop_all()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    checks = report(opts, capacity_result, run)
    say()
    say(f"== summary ({time.time() - started:.0f} s, {load_average()} at the end) ==")
    say("| check | measured | target | |")
    say("|---|---|---|---|")
    for check in checks:
        mark = "info" if check.ok is None else verdict(check.ok)
        say(f"| {check.what} | {check.value} | {check.target} | {mark} |")
    if opts.keep:
        say(f"kept {workdir}")
    return 1 if any(c.ok is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
