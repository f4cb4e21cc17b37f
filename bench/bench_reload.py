"""Benchmark: the daemon's memory across config reloads (SIGHUP), beside the same daemon without.

Issue "Faults an on-site box meets" (RSS flat within 10 % over an hour in which the config is
reloaded). Two daemons, one after the other, on the same generated config of --subjects
(bench_fleet's split: 60 % MQTT heartbeat devices, 20 % HTTP, 20 % SNMP) whose peers are all
absent (closed loopback ports: every check fails fast, the debounce is an hour, so nothing is
ticketed and the load is the same in both runs):
  baseline  started, sampled at the same moments, never reloaded;
  reloads   started, then --reloads SIGHUPs --every s apart. Each reload renames --change
            devices (a real change: the child's plan carries them, their names are saved).
Measured: VmRSS at each moment in both runs; the time from each SIGHUP to its "config reloaded"
log line. Target: after the last reload, RSS at most --target-growth % above the baseline's at
the same moment (the growth a reload leaves behind; the baseline's own growth, recent probe
results filling, cancels out).

Run from the repository root:
    .venv/bin/python bench/bench_reload.py [--subjects 10000] [--reloads 4] [--every 25]
Exit status 1 when the target is missed or a reload is not logged.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fleet.daemon import fleet_config
from fleet.peers import Children, bench_start, free_port
from fleet.procstat import load_average, memory_mib


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--subjects", type=int, default=10_000, help="subjects in the config (10000)")
    add("--reloads", type=int, default=4, help="SIGHUPs (4)")
    add("--every", type=float, default=25.0, help="s between reloads (25)")
    add("--warmup", type=float, default=60.0, help="s after start before the first (60)")
    add("--change", type=int, default=100, help="devices renamed by each reload (100)")
    add("--target-growth", type=float, default=5.0, help="%% above the baseline at the end (5)")
    add("--dir", type=Path, help="parent of the temporary folder")
    return parser.parse_args(argv)


@dataclass
class Run:
    label: str
    rss: list[float] = field(default_factory=list)  # at start+warmup, then after each reload
    reload_seconds: list[float | None] = field(default_factory=list)


def config_text(opts: argparse.Namespace, workdir: Path, listen: int, renamed: int) -> str:
    mqtt = opts.subjects * 6 // 10
    http = opts.subjects // 5
    snmp = opts.subjects - mqtt - http
    text, _ = fleet_config(
        db=workdir / "tocsin.db",
        listen_port=listen,
        http_base="http://127.0.0.1:9",  # discard: nothing listens
        http_count=http,
        snmp_ports=[(9, snmp)],
        broker_port=9,
        mqtt_count=mqtt,
        interval=30,
        debounce=3600,
        heartbeat_timeout=60,
        http_timeout=1,
        snmp_timeout=1,
        snmp_retries=1,
        max_concurrency=256,
        per_host=256,
    )
    # Rename the first `renamed` HTTP devices.
    for n in range(renamed):
        text = text.replace(f'name = "HTTP device {n}"\n', f'name = "HTTP device {n} (r)"\n', 1)
    return text


def reloaded_lines(log: Path) -> list[float]:
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if '"config reloaded"' in line:
            entry = json.loads(line)
            stamp = entry["timestamp"].replace("Z", "+00:00")
            times.append(datetime.fromisoformat(stamp).timestamp())
    return times


def one_run(
    opts: argparse.Namespace, workdir: Path, children: Children, label: str, reloads: int
) -> Run:
    folder = workdir / label
    folder.mkdir()
    listen = free_port()
    config = folder / "tocsin.toml"
    config.write_text(config_text(opts, folder, listen, 0))
    daemon = children.spawn(
        f"daemon-{label}", [sys.executable, "-m", "tocsin", "run", "--config", str(config)]
    )
    log = workdir / f"daemon-{label}.log"
    run = Run(label)
    try:
        time.sleep(opts.warmup)
        run.rss.append(memory_mib(daemon.pid) or 0.0)
        for r in range(opts.reloads):
            sent = None
            if r < reloads:
                # Alternate: rename --change devices, then rename them back.
                renamed = opts.change if r % 2 == 0 else 0
                config.write_text(config_text(opts, folder, listen, renamed))
                sent = time.time()
                daemon.process.send_signal(signal.SIGHUP)
            time.sleep(opts.every)
            if not daemon.running:
                raise SystemExit(f"the {label} daemon died; see {log}")
            run.rss.append(memory_mib(daemon.pid) or 0.0)
            if sent is not None:
                done = [t for t in reloaded_lines(log) if t >= sent]
                run.reload_seconds.append(done[0] - sent if done else None)
    finally:
        daemon.stop(signal.SIGTERM, timeout=30)
    return run


def main(argv: list[str]) -> int:
    started = bench_start(argv, lambda _: None, parse_args, "tocsin-reload-")
    if started is None:
        return 0
    opts, workdir, children, _ = started
    print(
        f"bench_reload: {opts.subjects:,} subjects, {opts.reloads} reloads {opts.every:g} s "
        f"apart after {opts.warmup:g} s, {opts.change} devices renamed each other reload "
        f"({load_average()}), work folder {workdir}",
        flush=True,
    )
    try:
        base = one_run(opts, workdir, children, "baseline", 0)
        print(f"baseline: VmRSS {', '.join(f'{x:.1f}' for x in base.rss)} MiB", flush=True)
        test = one_run(opts, workdir, children, "reloads", opts.reloads)
        print(f"reloads:  VmRSS {', '.join(f'{x:.1f}' for x in test.rss)} MiB", flush=True)
    finally:
        children.stop_all()
    print()
    print("| moment | baseline VmRSS | with reloads | difference | SIGHUP -> config reloaded |")
    print("|---|---:|---:|---:|---:|")
    for i, (a, b) in enumerate(zip(base.rss, test.rss, strict=True)):
        took = test.reload_seconds[i - 1] if i else None
        moment = "after warm-up" if i == 0 else f"after reload {i}"
        shown = "-" if i == 0 else ("not logged" if took is None else f"{took:.1f} s")
        print(f"| {moment} | {a:.1f} MiB | {b:.1f} MiB | {b - a:+.1f} MiB | {shown} |")
    growth = 100 * (test.rss[-1] - base.rss[-1]) / base.rss[-1]
    logged = all(t is not None for t in test.reload_seconds)
    ok = growth <= opts.target_growth and logged
    print()
    print(
        f"RSS after {opts.reloads} reloads vs without: {growth:+.1f} % (target <= "
        f"+{opts.target_growth:g} %): {'PASS' if growth <= opts.target_growth else 'FAIL'}; "
        f"every reload logged: {'yes' if logged else 'NO'} ({load_average()})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
