"""Whether the store takes writes, and why not, said once in an operator's words.

The writer reports every commit's outcome here. The first failure logs one error line naming
the cause ("disk full at /var/lib/tocsin/tocsin.db: free space, writes resume by themselves"),
then at most one reminder a minute with the count of failed writes, and one line when writes
succeed again. `/readyz`, `/metrics` and systemd's STATUS read `cause` and the counters.

`classify` is pure: it maps a database error (SQLAlchemy's wrapper, the driver's own error or
an OSError) to a `Fault` and the operator's sentence, from the error's text and errno.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

log = structlog.get_logger("tocsin.store")

REMIND_EVERY = 60.0


class Fault(StrEnum):
    DISK_FULL = "disk_full"
    LOCKED = "locked"
    MISSING = "missing"
    READ_ONLY = "read_only"
    IO_ERROR = "io_error"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class StoreFault:
    fault: Fault
    cause: str  # what an operator reads and acts on; never a URL or a password


def classify(exc: BaseException, path: str | None, *, waited: float | None = None) -> StoreFault:
    """The fault behind `exc`, for a store whose SQLite file is `path` (None: not SQLite)."""
    original = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = str(original).lower()
    number = getattr(original, "errno", None)
    where = f" at {path}" if path else ""
    if number == errno.ENOSPC or "disk is full" in text or "disk full" in text:
        return StoreFault(
            Fault.DISK_FULL, f"disk full{where}: free space, writes resume by themselves"
        )
    if "database is locked" in text or "database table is locked" in text:
        held = f" for {waited:.0f} s" if waited else ""
        return StoreFault(
            Fault.LOCKED,
            f"database{where} locked by another process{held}: writes are retried until it lets go",
        )
    if path is not None and not os.path.exists(path):
        return StoreFault(
            Fault.MISSING,
            f"database file missing{where}: restore it from a backup, or restart to start afresh",
        )
    if "readonly" in text or "read-only" in text or number in (errno.EROFS, errno.EACCES):
        return StoreFault(
            Fault.READ_ONLY, f"database{where} is read-only: check the file's owner and mount"
        )
    if "disk i/o error" in text or number == errno.EIO or "malformed" in text:
        return StoreFault(Fault.IO_ERROR, f"disk I/O error{where}: check the disk and the file")
    kind = type(original).__name__
    if path is None:
        # A database server (PostgreSQL): the kind of failure, never its address or user.
        return StoreFault(
            Fault.UNREACHABLE,
            f"database server unreachable ({kind}): writes are retried until it answers;"
            " check the server and the network",
        )
    return StoreFault(Fault.UNREACHABLE, f"database unreachable: {kind}")


class StoreHealth:
    """Failure and recovery edges of the store's writes (thread-safe: the writer thread and the
    event loop both report)."""

    def __init__(
        self,
        path: str | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        announce: bool = True,
    ) -> None:
        self.path = path
        self.announce = announce  # False: count and remember, but log nothing (a helper process)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._current: StoreFault | None = None
        self._since = 0.0
        self._reminded = 0.0
        self._failed_writes = 0  # in the current outage
        self.failures: Counter[Fault] = Counter()  # since start, by fault, for /metrics
        self._inode: tuple[int, int] | None = None
        self.on_change: Callable[[], None] | None = None  # told on each failure/recovery edge
        self.remember_file()

    @property
    def fault(self) -> StoreFault | None:
        return self._current

    @property
    def cause(self) -> str | None:
        return self._current.cause if self._current is not None else None

    def remember_file(self) -> None:
        """Note which file the store has open, so a file deleted or replaced under it shows."""
        if self.path is not None:
            try:
                stat = os.stat(self.path)
                self._inode = (stat.st_dev, stat.st_ino)
            except OSError:
                self._inode = None

    def check_file(self) -> None:
        """A deleted (or swapped) SQLite file takes writes silently into the void: say so."""
        if self.path is None or self._inode is None:
            return
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._inode
        except OSError:
            same = False
        if not same:
            self.failed(
                StoreFault(
                    Fault.MISSING,
                    f"database file missing at {self.path} (deleted or replaced while running):"
                    " restore it from a backup, or restart to start afresh",
                ),
                count=0,
            )
        elif self._current is not None and self._current.fault is Fault.MISSING:
            self.succeeded()

    def failed(self, fault: StoreFault, *, count: int = 1) -> None:
        now = self._monotonic()
        with self._lock:
            self.failures[fault.fault] += count
            first = self._current is None
            changed = not first and self._current != fault
            self._failed_writes += count
            if first:
                self._since = now
            self._current = fault
            remind = not first and (changed or now - self._reminded >= REMIND_EVERY)
            if first or remind:
                self._reminded = now
            failed_writes = self._failed_writes
            since = self._since
        if first and self.announce:
            log.error("store writes failing", fault=fault.fault.value, cause=fault.cause)
        if (first or changed) and self.on_change is not None:
            self.on_change()
        elif remind and self.announce:
            log.error(
                "store writes still failing",
                fault=fault.fault.value,
                cause=fault.cause,
                failed_writes=failed_writes,
                outage_seconds=round(now - since, 1),
            )

    def succeeded(self) -> None:
        if self._current is None:  # the common case, without the lock
            return
        now = self._monotonic()
        with self._lock:
            fault, self._current = self._current, None
            failed_writes, self._failed_writes = self._failed_writes, 0
            since = self._since
        if fault is not None and self.announce:
            log.info(
                "store writes resumed",
                fault=fault.fault.value,
                failed_writes=failed_writes,
                outage_seconds=round(now - since, 1),
            )
        if fault is not None and self.on_change is not None:
            self.on_change()
