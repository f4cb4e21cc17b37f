"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package, a cluster made
with initdb under a temporary folder, listening on a free loopback port, stopped and deleted at
the end. PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user
(the package creates it) and its commands run through runuser.

Each test gets a database of its own, copied from a template the migrations ran on once
(CREATE DATABASE ... TEMPLATE takes milliseconds; the migrations take a second).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPLATE = "tocsin_template"


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (apt-get install postgresql): the tests need it"
        )
    return found[0].parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """`durable`: PostgreSQL's own settings, where a crash loses nothing acknowledged; else
    fsync and synchronous_commit off, for speed (no test here crashes that server)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = _bin_dir()
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tocsin-pg-"))
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._names = itertools.count(1)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command], check=True, capture_output=True, text=True, cwd=self.folder
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"),
            *("-D", str(self.data), "-U", self.user, "--auth=trust", "--encoding=UTF8"),
            "--no-sync",
        )
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after `halt`), on the same port and data."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin / "pg_ctl"),
            *("-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w"),
            "start",
        )

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: "fast" ends sessions as a restart does,
        "immediate" as a crash."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self.halt("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        """Run one statement outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def new_database(self, template: str | None = TEMPLATE) -> str:
        name = f"t{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name


@contextlib.contextmanager
def running(*, durable: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer(durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()
