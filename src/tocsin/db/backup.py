"""`tocsin db backup FILE`: a consistent copy of the SQLite store while the daemon runs.

SQLite's online backup API copies the pages a step at a time. On its own, a step sequence
restarts whenever another connection writes between two steps, so on a busy store it might
never finish. We hold one read transaction on the source for the whole copy instead: in WAL
mode a reader never blocks the daemon's writers, the steps all read the same snapshot (the
store as it was when the backup began) and nothing restarts.

The copy goes to FILE.tmp (created 0600: it holds every ticket), is made a single-file
(rollback journal) database, fsynced and renamed over FILE, so FILE is either the old file
or a whole backup, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tocsin.db.engine import BUSY_TIMEOUT_MS

# Pages per step (4 MiB with SQLite's default 4 KiB pages): between steps the source's lock is
# free for a checkpoint to run, and `progress` is told how far the copy got.
STEP_PAGES = 1024

Progress = Callable[[int, int], None]  # (pages copied, pages in total), after each step


class BackupError(Exception):
    """The backup failed (exit status 1); the message says why."""


class BackupRefused(BackupError):
    """The backup was not started: bad input, such as a non-SQLite store (exit status 2)."""


@dataclass(frozen=True)
class BackupResult:
    source: Path
    target: Path
    pages: int
    size: int  # bytes


def sqlite_path(store_url: str) -> Path:
    """The file of a SQLite store URL; BackupRefused for any other store."""
    try:
        url = make_url(store_url)
    except Exception:  # SQLAlchemy's ArgumentError; its message would repeat the URL
        raise BackupRefused("store.url is not a database URL") from None
    if url.get_backend_name() != "sqlite":
        raise BackupRefused(
            f"tocsin db backup copies SQLite stores only; this store is {url.get_backend_name()} "
            "(use that database's own backup tool, e.g. pg_dump)"
        )
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupRefused("the SQLite store has no file to back up")
    return Path(database)


def backup(
    store_url: str,
    target: Path,
    *,
    force: bool = False,
    pages: int = STEP_PAGES,
    progress: Progress | None = None,
) -> BackupResult:
    """Copy the SQLite store at `store_url` to `target`, consistent as of the moment it began.

    Refuses (BackupRefused) a store that is not a SQLite file, a missing store, a target that
    exists (unless `force`) and a target that is the store itself.
    """
    source = sqlite_path(store_url)
    if not source.is_file():
        raise BackupRefused(f"there is no SQLite store at {source}")
    if target.exists() and target.resolve() == source.resolve():
        raise BackupRefused(f"{target} is the store itself")
    if target.is_dir():
        raise BackupRefused(f"{target} is a directory: name the backup file")
    if target.exists() and not force:
        raise BackupRefused(f"{target} exists: pass --force to replace it")
    temporary = target.with_name(target.name + ".tmp")
    try:
        with _exclusive_file(temporary, force=force):
            copied = _copy(source, temporary, pages, progress)
            _fsync(temporary)
            temporary.replace(target)
    except sqlite3.Error as exc:
        raise BackupError(f"the backup failed: {exc}") from None
    except OSError as exc:
        where = exc.filename or target
        raise BackupError(f"the backup failed: {where}: {exc.strerror or exc}") from None
    _fsync_directory(target.parent)
    return BackupResult(source, target, copied, target.stat().st_size)


@contextlib.contextmanager
def _exclusive_file(path: Path, *, force: bool) -> Iterator[None]:
    """Create `path` empty and private (an empty file is a valid empty SQLite database);
    remove it again unless the body renamed it away."""
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise BackupRefused(
            f"{path} exists: another backup to this file is running, or one was interrupted "
            "(pass --force to remove it)"
        ) from None
    os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _copy(source: Path, target: Path, pages: int, progress: Progress | None) -> int:
    # mode=ro: the backup never writes the live store.
    src = sqlite3.connect(
        f"{source.resolve().as_uri()}?mode=ro",
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
    )
    try:
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            # One snapshot for every step (see the module docstring).
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()

            def report(status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=pages, progress=report)
            src.execute("COMMIT")
            # The copy inherits WAL mode; a backup is one self-contained file.
            dst.execute("PRAGMA journal_mode=DELETE")
            copied: int = dst.execute("PRAGMA page_count").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    return copied


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    # Makes the rename durable; some file systems do not support it, and the data is already
    # safe in the file, so a failure here is not worth failing the backup.
    with contextlib.suppress(OSError):
        _fsync(path)
