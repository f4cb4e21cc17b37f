"""Helpers of bench/bench_soak.py: peers that survive the faults it injects, and the faults.

- `heartbeats`: like `sim.heartbeats` (each MQTT device's heartbeat once per interval at a
  random phase, QoS 0), but it reconnects when the broker restarts (heartbeats that fell due
  while it was away are sent on reconnecting, late, as devices with a buffer would).
- `start_broker`: mosquitto on a given port, with persistence on or off (a restart of the
  broker is one of the faults; persistence decides whether it keeps its retained messages).
- `hold_lock`: a second process that holds `BEGIN EXCLUSIVE` on the SQLite file for a while.
- `fill` / tmpfs helpers: a small tmpfs for the store that the benchmark fills and frees.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

from aiohttp import web

from fleet.peers import Child, Children, binary, tcp_ready, wait_until
from fleet.sim import hb_topic

# -- MQTT heartbeats that outlive a broker restart ---------------------------------------------


async def heartbeats(
    broker_port: int, control_port: int, devices: int, interval: float, prefix: str, seed: int
) -> None:
    import aiomqtt

    rng = random.Random(seed)
    start = time.monotonic()
    due = [(start + rng.uniform(0, interval), n) for n in range(devices)]
    heapq.heapify(due)
    stats: dict[str, float] = {"sent": 0, "max_late_s": 0.0, "reconnects": 0, "connected": 0}

    async def report(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/control/stats", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    print("READY", flush=True)

    client = aiomqtt.Client(
        "127.0.0.1", broker_port, identifier=f"bench-soak-heartbeats-{os.getpid()}", keepalive=30
    )
    while True:
        try:
            async with client:
                stats["connected"] = 1
                while True:
                    at, n = due[0]
                    delay = at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(min(delay, 1.0))
                        continue
                    await client.publish(hb_topic(prefix, n), b"1", qos=0)
                    heapq.heapreplace(due, (at + interval, n))
                    stats["max_late_s"] = max(stats["max_late_s"], -delay)
                    stats["sent"] += 1
        except aiomqtt.MqttError:
            stats["connected"] = 0
            stats["reconnects"] += 1
            await asyncio.sleep(0.5)


# -- the broker ---------------------------------------------------------------------------------


def start_broker(children: Children, name: str, port: int, *, persistence: bool) -> Child:
    folder = children.workdir / "mosquitto"
    folder.mkdir(exist_ok=True)
    config = folder / f"{name}.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"user {os.environ.get('USER') or 'root'}",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 30"]
    else:
        lines += ["persistence false"]
    config.write_text("\n".join(lines) + "\n")
    child = children.spawn(name, [binary("mosquitto"), "-c", str(config)])
    wait_until(lambda: tcp_ready(port), name, child)
    return child


# -- a second process locking the store ---------------------------------------------------------


def hold_lock(db: str, seconds: float) -> None:
    """BEGIN EXCLUSIVE on `db` (waiting up to 60 s for it), hold it `seconds`, roll back.
    Prints `LOCKED <wall time>` and `RELEASED <wall time>` on stdout."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        print(f"LOCKED {time.time()}", flush=True)
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        print(f"RELEASED {time.time()}", flush=True)
    finally:
        conn.close()


# -- a small tmpfs for the store ----------------------------------------------------------------


def mount_tmpfs(folder: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of `size_mb` MiB on `folder`; None when mounted, else why not."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"mount exit {result.returncode}"
    return None


def unmount(folder: Path) -> None:
    for command in (["umount", str(folder)], ["umount", "-l", str(folder)]):
        if subprocess.run(command, capture_output=True, check=False).returncode == 0:
            return


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, limit_seconds: float = 30.0) -> int:
    """Write `path` until the file system is full (ENOSPC); return the bytes written."""
    written = 0
    until = time.monotonic() + limit_seconds
    with path.open("wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 16, 1 << 12):
            block = b"\0" * size
            while time.monotonic() < until:
                try:
                    written += handle.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())
    return written
