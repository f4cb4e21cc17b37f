"""`tocsin db backup`: SQLite's online backup of a real store file while tickets keep coming."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.conftest import config_text
from tocsin.cli import main
from tocsin.db import backup
from tocsin.tickets.model import Actor, ActorType, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

FLOW = Actor(ActorType.WORKFLOW, "door-check")


def door(n: int) -> OpenRequest:
    subject = Subject(SubjectType.DEVICE, f"door-{n}", f"Door {n}")
    return OpenRequest("acme", Source.WORKFLOW, subject, "door_ajar", "", FLOW)


def ticket_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM tickets ORDER BY seq")]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"TOCSIN_CONFIG": None})


def store_file(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite+aiosqlite:///"))


async def test_a_backup_taken_while_tickets_are_written_holds_those_committed_before_it(
    store: TicketStore, db_url: str, tmp_path: Path
) -> None:
    for n in range(20):
        await store.open(door(n))
    before = list(range(1, 21))
    target = tmp_path / "backups" / "tocsin.db"
    target.parent.mkdir()

    # Between the backup's steps (one page each) the daemon's store commits a ticket: the
    # backup thread waits for each commit, so writes really land in the middle of the copy.
    loop = asyncio.get_running_loop()
    step = asyncio.Queue[None]()
    written = threading.Semaphore(0)
    steps: list[tuple[int, int]] = []

    def progress(copied: int, total: int) -> None:
        steps.append((copied, total))
        if len(steps) <= 5:
            loop.call_soon_threadsafe(step.put_nowait, None)
            assert written.acquire(timeout=10), "the store could not write during the backup"

    async def keep_writing() -> int:
        count = 0
        while count < 5:
            await step.get()
            await store.open(door(100 + count))
            count += 1
            written.release()
        return count

    writer = asyncio.create_task(keep_writing())
    result = await asyncio.to_thread(backup.backup, db_url, target, pages=1, progress=progress)
    assert await writer == 5

    assert len(steps) == result.pages > 5  # one page a step, the writes in between
    assert result.target == target
    assert result.size == target.stat().st_size
    assert integrity(target) == "ok"
    assert ticket_seqs(target) == before  # the store as it was when the backup began
    assert ticket_seqs(store_file(db_url)) == list(range(1, 26))
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "backups" / "tocsin.db.tmp").exists()
    with sqlite3.connect(target) as conn:  # one self-contained file, not a WAL database
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    file = tmp_path / "tocsin.toml"
    file.write_text(config_text(db_url), encoding="utf-8")
    return file


async def test_the_cli_backs_up_the_configured_store(
    store: TicketStore, config_file: Path, tmp_path: Path
) -> None:
    await store.open(door(1))
    target = tmp_path / "copy.db"
    result = await asyncio.to_thread(
        invoke, "db", "backup", str(target), "--config", str(config_file)
    )
    assert result.exit_code == 0, result.output
    assert f"to {target}" in " ".join(result.stdout.split())
    assert ticket_seqs(target) == [1]
    assert integrity(target) == "ok"


async def test_an_existing_target_is_refused_unless_forced(
    store: TicketStore, config_file: Path, tmp_path: Path
) -> None:
    await store.open(door(1))
    target = tmp_path / "copy.db"
    target.write_text("yesterday's backup")
    args = ("db", "backup", str(target), "--config", str(config_file))

    refused = await asyncio.to_thread(invoke, *args)
    assert refused.exit_code == 2
    assert "exists: pass --force to replace it" in " ".join(refused.stderr.split())
    assert target.read_text() == "yesterday's backup"

    forced = await asyncio.to_thread(invoke, *args, "--force")
    assert forced.exit_code == 0, forced.output
    assert ticket_seqs(target) == [1]


def test_a_store_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "tocsin.toml"
    config.write_text(config_text("postgresql+asyncpg://tocsin@db.invalid/tocsin"))
    target = tmp_path / "copy.db"
    result = invoke("db", "backup", str(target), "--config", str(config))
    assert result.exit_code == 2
    assert "copies SQLite stores only" in " ".join(result.stderr.split())
    assert not target.exists()


def test_a_missing_store_is_refused(tmp_path: Path, db_url: str) -> None:
    with pytest.raises(backup.BackupRefused, match="there is no SQLite store at"):
        backup.backup(db_url, tmp_path / "copy.db")


async def test_the_store_itself_is_never_the_target(store: TicketStore, db_url: str) -> None:
    with pytest.raises(backup.BackupRefused, match="is the store itself"):
        backup.backup(db_url, store_file(db_url), force=True)


async def test_a_leftover_temporary_file_is_refused_unless_forced(
    store: TicketStore, db_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "copy.db"
    (tmp_path / "copy.db.tmp").write_text("an interrupted backup")
    with pytest.raises(backup.BackupRefused, match=r"copy\.db\.tmp exists"):
        backup.backup(db_url, target)
    assert not target.exists()
    backup.backup(db_url, target, force=True)
    assert integrity(target) == "ok"
