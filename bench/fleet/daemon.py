"""The daemon under test: its generated config, its JSON log, its SQLite file (read-only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fleet.sim import hb_topic, http_device_url, http_id

ORG = "fleet"
TOKEN = "fleet-bench-read-token"
BROKER = "site"
MQTT_PREFIX = "fleet"


@dataclass
class Fleet:
    """Who is who: subject ids by probe type, and where each SNMP subject's agent listens."""

    http: list[str] = field(default_factory=list)
    snmp: dict[str, int] = field(default_factory=dict)  # id -> agent port
    mqtt: list[str] = field(default_factory=list)

    def kind(self, subject_id: str) -> str:
        return subject_id.split("-", 1)[0]


def snmp_id(n: int) -> str:
    return f"snmp-{n:05d}"


def mqtt_id(n: int) -> str:
    return f"mqtt-{n:05d}"


def fleet_config(
    *,
    db: Path,
    listen_port: int,
    http_base: str,
    http_count: int,
    snmp_ports: list[tuple[int, int]],  # (port, subjects on it)
    broker_port: int,
    mqtt_count: int,
    interval: float,
    debounce: float,
    heartbeat_timeout: float,
    http_timeout: float,
    snmp_timeout: float,
    snmp_retries: int,
    max_concurrency: int,
    per_host: int,
    event_loop: str = "asyncio",
    pull_probes: str = "auto",
) -> tuple[str, Fleet]:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{listen_port}"',
        f'event_loop = "{event_loop}"',
        "[store]",
        f'url = "sqlite+aiosqlite:///{db}"',
        "[log]",
        'level = "info"',
        'format = "json"',
        "[monitor]",
        f'interval = "{interval:g}s"',
        f'debounce = "{debounce:g}s"',
        f"max_concurrency = {max_concurrency}",
        f"per_host_concurrency = {per_host}",
        f'pull_probes = "{pull_probes}"',
        # Every injected failure is timed by its own ticket: no storm cap (200 fail at once).
        "storm_limit = 0",
        "[[orgs]]",
        f'slug = "{ORG}"',
        'name = "Fleet benchmark"',
        "[[orgs.tokens]]",
        'name = "bench-read"',
        'scope = "read"',
        f'token_sha256 = "{digest}"',
        "[[mqtt.brokers]]",
        f'name = "{BROKER}"',
        'host = "127.0.0.1"',
        f"port = {broker_port}",
    ]
    fleet = Fleet()
    for n in range(http_count):
        fleet.http.append(http_id(n))
        url = http_device_url(http_base, n)
        probe = f'{{ type = "http", url = "{url}", timeout = "{http_timeout:g}s" }}'
        lines += _device(http_id(n), f"HTTP device {n}", probe)
    n = 0
    for port, count in snmp_ports:
        for _ in range(count):
            fleet.snmp[snmp_id(n)] = port
            probe = (
                f'{{ type = "snmp", host = "127.0.0.1", port = {port}, community = "public", '
                f'timeout = "{snmp_timeout:g}s", retries = {snmp_retries} }}'
            )
            lines += _device(snmp_id(n), f"SNMP device {n}", probe)
            n += 1
    for n in range(mqtt_count):
        fleet.mqtt.append(mqtt_id(n))
        probe = (
            f'{{ type = "mqtt", broker = "{BROKER}", heartbeat_topic = '
            f'"{hb_topic(MQTT_PREFIX, n)}", heartbeat_timeout = "{heartbeat_timeout:g}s" }}'
        )
        lines += _device(mqtt_id(n), f"MQTT device {n}", probe)
    return "\n".join(lines) + "\n", fleet


def _device(subject_id: str, name: str, probe: str) -> list[str]:
    return [
        "[[devices]]",
        f'org = "{ORG}"',
        f'id = "{subject_id}"',
        f'name = "{name}"',
        f"probe = {probe}",
    ]


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class DaemonLog:
    """What the daemon's JSON log says: when the monitor started, when each subject was first
    seen unhealthy, tickets opened, and every warning or error that is not a ticket."""

    monitor_started: float | None = None
    failing_at: dict[str, float] = field(default_factory=dict)
    levels: Counter[str] = field(default_factory=Counter)
    others: Counter[str] = field(default_factory=Counter)  # unexpected warnings/errors
    not_json: int = 0


EXPECTED_WARNINGS = {"subject down: ticket opened"}


def read_log(path: Path) -> DaemonLog:
    result = DaemonLog()
    if not path.exists():
        return result
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            result.not_json += 1
            continue
        if not isinstance(entry, dict):
            continue
        event, level = str(entry.get("event", "")), str(entry.get("level", ""))
        result.levels[level] += 1
        stamp = entry.get("timestamp")
        if event == "health monitor started" and stamp:
            result.monitor_started = parse_time(stamp)
        elif entry.get("reason") == "failing" and stamp:
            subject = str(entry.get("subject", "")).removeprefix("device:")
            result.failing_at.setdefault(subject, parse_time(stamp))
        if level in ("warning", "error", "critical") and event not in EXPECTED_WARNINGS:
            result.others[f"{level}: {event[:90]}"] += 1
    return result


def health_counts(db: Path) -> Counter[tuple[str, str]]:
    """(probe type, health) counts from subject_states, through a read-only connection."""
    counts: Counter[tuple[str, str]] = Counter()
    try:
        with contextlib.closing(_read_only(db)) as conn:
            rows = conn.execute(
                "SELECT subject_id, health FROM subject_states WHERE org = ?", (ORG,)
            ).fetchall()
    except sqlite3.Error:
        return counts
    for subject_id, health in rows:
        counts[(subject_id.split("-", 1)[0], health)] += 1
    return counts


def open_ticket_count(db: Path) -> int:
    try:
        with contextlib.closing(_read_only(db)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM tickets WHERE org = ? AND state = 'open'", (ORG,)
            ).fetchone()
    except sqlite3.Error:
        return -1
    return int(row[0])


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
