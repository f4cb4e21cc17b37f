"""CPU time and memory of processes, and the machine's busy time, from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (every thread), in seconds; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def children_of(pid: int) -> list[int]:
    """The process's children (of every thread), from /proc/PID/task/*/children."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        return found
    return found


def child_running(pid: int, module: str) -> int | None:
    """The child of `pid` that runs `python -m module` (the daemon's probe worker is
    tocsin.monitor.worker, its webhook delivery process tocsin.delivery.process), if any."""
    for child in children_of(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module.encode() in argv:
            return child
    return None


PROBE_WORKER = "tocsin.monitor.worker"
DELIVERY_PROCESS = "tocsin.delivery.process"


def udp_receive_errors() -> int:
    """Datagrams the kernel dropped because a socket's receive buffer was full (all sockets,
    since boot: take the difference over a window)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def memory_mib(pid: int, key: str = "VmRSS") -> float | None:
    """A /proc/PID/status size (VmRSS, VmHWM, ...) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs since boot: busy excludes idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    total = sum(values)
    busy = total - values[3] - values[4]
    return busy / CLK_TCK, total / CLK_TCK


def load_average() -> str:
    return f"load average {Path('/proc/loadavg').read_text().split()[0]} on {os.cpu_count()} CPUs"


@dataclass
class CpuMeter:
    """CPU share of one process over an interval: start(), then share() as % of one core."""

    pid: int
    wall: float = 0.0
    cpu: float = 0.0

    def start(self, now: float) -> None:
        self.wall, self.cpu = now, cpu_seconds(self.pid) or 0.0

    def share(self, now: float) -> float:
        used = (cpu_seconds(self.pid) or self.cpu) - self.cpu
        return 100.0 * used / max(1e-9, now - self.wall)


@dataclass
class MachineMeter:
    """How busy all CPUs were over an interval, in % of one core (200% = 2 cores busy)."""

    busy: float = 0.0
    total: float = 0.0

    def start(self) -> None:
        self.busy, self.total = machine_busy_seconds()

    def share(self) -> float:
        busy, total = machine_busy_seconds()
        cores = os.cpu_count() or 1
        return 100.0 * cores * (busy - self.busy) / max(1e-9, total - self.total)
