"""Real peers for the probe tests: a mosquitto broker and a net-snmp agent, each on a free
loopback port, started and stopped by fixtures (and restartable on the same port).

A missing binary fails the test, it does not skip it: scripts/test.sh installs them.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

STARTUP_DEADLINE = 10.0

# Credentials the test agent knows (test values, not secrets).
SNMP_COMMUNITY = "public"
SNMP_V3_USERS = {
    # user: (auth protocol, auth key, priv key)
    "shauser": ("SHA", "authpass123", "privpass123"),
    "sha256user": ("SHA-256", "authpass456", "privpass456"),
}
SNMP_SYS_NAME = "tocsin-test-agent"


def binary(name: str) -> str:
    """The path of a system program the tests need; fails the test when it is missing."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    if found is None:
        pytest.fail(
            f"{name} is not installed; scripts/test.sh installs it "
            "(apt-get install mosquitto mosquitto-clients snmpd snmp)"
        )
    return found


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Daemon:
    """A foreground daemon with its output in a file; `start` returns once it serves."""

    name = "daemon"

    def __init__(self, workdir: Path, port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
        )
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not self.ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        await asyncio.to_thread(self.stop, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Mosquitto(_Daemon):
    """mosquitto in the foreground on 127.0.0.1:port, anonymous access, no persistence."""

    name = "mosquitto"

    def __init__(
        self, workdir: Path, port: int, *, listener: str = "", anonymous: bool = True
    ) -> None:
        super().__init__(workdir, port)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} 127.0.0.1\n{listener}"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence false\n"
            # As root mosquitto would drop to the `mosquitto` user, which cannot read files
            # under pytest's private tmp folder; as anyone else this line has no effect.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    def command(self) -> list[str]:
        return [binary("mosquitto"), "-c", str(self.config)]

    def ready(self) -> bool:  # the port accepts connections (TLS or not)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


class Snmpd(_Daemon):
    """net-snmp's agent in the foreground on udp:127.0.0.1:port, state in its own folder,
    with the v2c community `public` and the v3 users of SNMP_V3_USERS (authPriv, AES)."""

    name = "snmpd"

    def __init__(
        self,
        workdir: Path,
        port: int,
        users: dict[str, tuple[str, str, str]] = SNMP_V3_USERS,
    ) -> None:
        super().__init__(workdir, port)
        self.config = workdir / "snmpd.conf"
        self.state = workdir / "state"
        self.state.mkdir(exist_ok=True)
        lines = [
            f"rocommunity {SNMP_COMMUNITY} 127.0.0.1",
            f"sysName {SNMP_SYS_NAME}",
            "sysLocation test-lab",
            "sysContact ops@example.test",
            "sysServices 72",
            "dontLogTCPWrappersConnects yes",
        ]
        for user, (auth, auth_key, priv_key) in users.items():
            lines += [f"createUser {user} {auth} {auth_key} AES {priv_key}", f"rouser {user} priv"]
        self.config.write_text("\n".join(lines) + "\n")

    def environment(self) -> dict[str, str]:
        # MIBS="": no MIB loading (and no ~300 "Cannot find module" lines); state under workdir.
        return {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(self.state)}

    def command(self) -> list[str]:
        return [
            binary("snmpd"),
            "-f",
            "-Lo",
            "-C",
            "-I",
            "-smux",
            "-c",
            str(self.config),
            "-p",
            str(self.workdir / "snmpd.pid"),
            f"udp:127.0.0.1:{self.port}",
        ]

    def ready(self) -> bool:
        result = subprocess.run(
            [
                *(binary("snmpget"), "-v2c", "-c", SNMP_COMMUNITY, "-t", "0.2", "-r", "0"),
                *(f"127.0.0.1:{self.port}", "1.3.6.1.2.1.1.3.0"),
            ],
            env=self.environment(),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    agent = Snmpd(tmp_path / "snmpd", free_port(socket.SOCK_DGRAM))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def other_snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    """A second agent whose v3 users have the same names as the first's, but other keys."""
    users = {
        user: (auth, f"other-{a}", f"other-{p}") for user, (auth, a, p) in SNMP_V3_USERS.items()
    }
    agent = Snmpd(tmp_path / "other-snmpd", free_port(socket.SOCK_DGRAM), users)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
