"""Child processes of the benchmark: mosquitto, snmpd agents and Python roles of this script.

Every child is started with PR_SET_PDEATHSIG (SIGKILL), so none outlives the benchmark even
if it is killed itself; `Children.stop_all` (called from a finally block and from atexit)
stops them in the orderly way first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PR_SET_PDEATHSIG = 1
BENCH_SCRIPT = Path(__file__).resolve().parent.parent / "bench_fleet.py"
SNMP_COMMUNITY = "public"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    if found is None:
        raise SystemExit(f"{name} is not installed (apt-get install mosquitto snmpd snmp)")
    return found


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Child:
    def __init__(self, name: str, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.stopped_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.stopped_at is None:
            self.stopped_at = time.time()
        if not self.log.closed:
            self.log.close()
        return self.process.returncode


class Children:
    """The registry of every process the benchmark started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        atexit.register(self.stop_all)

    def spawn(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> Child:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log if stdout is None else stdout,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def role(self, name: str, role: str, *args: str, stdout: int | None = None) -> Child:
        """This benchmark script in a hidden role (a simulated peer or a capacity loop)."""
        return self.spawn(
            name, [sys.executable, str(BENCH_SCRIPT), "--role", role, *args], stdout=stdout
        )

    def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(timeout=5)


def wait_until(predicate: object, what: str, child: Child, deadline: float = 20.0) -> None:
    assert callable(predicate)
    until = time.monotonic() + deadline
    while not predicate():
        if not child.running:
            raise SystemExit(f"{what} exited early; see {child.log.name}")
        if time.monotonic() > until:
            raise SystemExit(f"{what} did not start within {deadline:g} s; see {child.log.name}")
        time.sleep(0.05)


def start_mosquitto(children: Children, port: int) -> Child:
    folder = children.workdir / "mosquitto"
    folder.mkdir(exist_ok=True)
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        f"user {os.environ.get('USER') or 'root'}\n"
        # QoS 0 floods to a slow subscriber must queue, not be dropped (capacity loops).
        "max_queued_messages 0\n"
        "max_queued_bytes 0\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\n"
    )
    child = children.spawn("mosquitto", [binary("mosquitto"), "-c", str(config)])
    wait_until(lambda: tcp_ready(port), "mosquitto", child)
    return child


def snmpd_env(state: Path) -> dict[str, str]:
    return {"MIBS": "", "SNMP_PERSISTENT_DIR": str(state)}


def snmp_ready(port: int, env: dict[str, str]) -> bool:
    result = subprocess.run(
        [
            *(binary("snmpget"), "-v2c", "-c", SNMP_COMMUNITY, "-t", "0.2", "-r", "0"),
            *(f"127.0.0.1:{port}", SYS_UPTIME),
        ],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def start_snmpd(children: Children, name: str, port: int) -> Child:
    folder = children.workdir / name
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    config = folder / "snmpd.conf"
    config.write_text(
        f"rocommunity {SNMP_COMMUNITY} 127.0.0.1\n"
        f"sysName {name}\nsysLocation bench\n"
        "dontLogTCPWrappersConnects yes\n"
    )
    env = snmpd_env(state)
    command = [binary("snmpd"), "-f", "-Lo", "-C", "-I", "-smux", "-c", str(config)]
    command += ["-p", str(folder / "snmpd.pid"), f"udp:127.0.0.1:{port}"]
    child = children.spawn(name, command, env=env)
    wait_until(lambda: snmp_ready(port, env), name, child)
    return child


def bench_start(
    argv: list[str],
    run_hidden_role: Callable[[list[str]], None],
    parse_args: Callable[[list[str]], Any],
    prefix: str,
) -> tuple[Any, Path, Children, float] | None:
    """The start every bench's main() shares. `--role ...` runs a hidden child role (a peer
    the bench spawned) and gives None; otherwise the parsed options, a fresh work folder
    (under --dir), its Children and the start time, with SIGTERM turned into
    KeyboardInterrupt so the bench cleans up."""
    if argv[:1] == ["--role"]:
        with contextlib.suppress(KeyboardInterrupt):
            run_hidden_role(argv)
        return None
    opts = parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=opts.dir))
    return opts, workdir, Children(workdir), time.time()
