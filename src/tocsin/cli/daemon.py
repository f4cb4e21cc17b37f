"""`tocsin run` (signals are handled here and only here), `check-config`,
`db upgrade|backup|migrate-to`."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from pathlib import Path

import click
import structlog

from tocsin import app, logs
from tocsin.cli.base import (
    config_option,
    err,
    fail,
    load_settings,
    main,
    out,
    report_invalid,
    with_database,
)
from tocsin.config import ConfigError, Settings, load, reuse_unchanged
from tocsin.db import backup, copy_store, migrate
from tocsin.db.engine import Database, StoreUrlError
from tocsin.monitor import worker
from tocsin.reparse import ReparseFailed, parse_at_start, reparse


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the daemon: SIGTERM or SIGINT stops it."""
    # What the start makes (the config, the subjects' state, the probes: millions of objects at
    # 100,000 subjects) lives as long as the process. With the cyclic collector on, each full
    # collection on the way walks all of it again (a second of a 10 s start): it stays off
    # until the daemon is ready, which freezes what exists then and turns it back on.
    gc.disable()
    spare = worker.spare(config_path)
    try:
        settings = _start_settings(config_path)
    except BaseException:
        if spare is not None:
            spare.close()
        raise
    logs.configure(settings.config.log.level, settings.config.log.format)

    async def serve() -> None:
        stop = asyncio.Event()
        reloads: asyncio.Queue[Settings] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_stop() -> None:
            stop.set()
            # A stop should take a second or two; if it hangs, say where.
            loop.call_later(STOP_REPORT_AFTER, report_stuck_tasks)

        latest = settings

        async def reload() -> None:
            # Parsed in a child process: a config of 100,000 subjects takes seconds to read
            # (the event loop keeps watching meanwhile), and its garbage stays out of the
            # daemon's heap. One at a time, in the order sent.
            nonlocal latest
            async with parsing:
                new = await reload_settings(config_path, latest)
                if new is not None:
                    latest = new
                    logs.configure(new.config.log.level, new.config.log.format)
                    reloads.put_nowait(new)

        parsing = asyncio.Lock()
        pending: set[asyncio.Task[None]] = set()

        def on_reload() -> None:
            task = loop.create_task(reload(), name="tocsin-reload-parse")
            pending.add(task)
            task.add_done_callback(pending.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        loop.add_signal_handler(signal.SIGHUP, on_reload)
        await app.run(settings, stop, reloads=reloads, spare=spare)

    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.config.server.event_loop)) as runner:
            runner.run(serve())
    except StoreUrlError as exc:
        fail(f"store.url: {exc}")
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", 1)
    except ExceptionGroup as group:
        if group.subgroup(app.ProbingLockLost) is None:
            raise
        fail("stopped: the probing lock was lost (see the log); restart to stand by", 1)
    finally:
        if spare is not None:
            spare.close()


STOP_REPORT_AFTER = 5.0
PARSE_APART_FROM_BYTES = 256 * 1024  # a config this size has thousands of subjects


def _start_settings(config_path: Path) -> Settings:
    """The config the daemon starts on: a large one parsed in a child process (see
    `parse_at_start`), the others here; an invalid one reported and the process ended."""
    try:
        large = config_path.stat().st_size >= PARSE_APART_FROM_BYTES
    except OSError:
        large = False  # load_settings says why it cannot be read
    if large:
        try:
            settings = parse_at_start(config_path)
        except ConfigError as exc:
            report_invalid(config_path, exc)
        if settings is not None:
            return settings
    return load_settings(config_path, keep_source=True)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """[server] event_loop: uvloop's loop (auto: when installed), else asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            fail("server.event_loop: uvloop is not installed (pip install uvloop)")
        return None
    return uvloop.new_event_loop


async def reload_settings(path: Path, running: Settings) -> Settings | None:
    """The config at `path` for a reload (SIGHUP), sharing `running`'s unchanged subjects;
    None, with every problem logged, when it is invalid: the running config then stays."""
    log = structlog.get_logger("tocsin")
    try:
        try:
            return await reparse(path, running)
        except ReparseFailed as exc:  # e.g. the package was replaced under the running daemon
            log.warning("config reload: the child parse failed; parsing here", error=str(exc))
            return await asyncio.to_thread(_load_sharing, path, running)
    except ConfigError as exc:
        log.error(
            "config reload refused: the new config is invalid; keeping the running one",
            config=str(path),
            problems=[str(p) for p in exc.problems],
        )
        return None


def _load_sharing(path: Path, running: Settings) -> Settings:
    """The config parsed here, with `running`'s objects in place of equal subjects (what the
    child's plan does): what runs keeps the objects it was built from."""
    new = load(path, keep_source=True)
    reuse_unchanged(running.config, new.config)
    return new


def report_stuck_tasks() -> None:
    """Log every task still running, with where it waits (for a stop that takes too long)."""
    log = structlog.get_logger("tocsin")
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames]
        log.warning("still running while stopping", task=task.get_name(), stack=where)


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE; print every problem with its key path."""
    settings = load_settings(file)
    orgs = len(settings.config.orgs)
    out.print(
        f"{file}: valid ({orgs} org{'s' if orgs != 1 else ''}, "
        f"{len(settings.tokens)} token{'s' if len(settings.tokens) != 1 else ''})",
        highlight=False,
    )


@main.group()
def db() -> None:
    """The ticket store's database."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: Path) -> None:
    """Create the schema or bring it to the newest revision."""
    settings = load_settings(config_path)

    async def upgrade(database: Database) -> None:
        await migrate.upgrade(database)

    with_database(settings, upgrade)
    out.print(f"schema at revision {migrate.head_revision()}")


@db.command("backup")
@config_option
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def db_backup(config_path: Path, file: Path, force: bool) -> None:
    """Copy the SQLite store to FILE, consistent as of the start, while the daemon runs
    (SQLite's online backup; the daemon keeps writing)."""
    settings = load_settings(config_path)
    try:
        result = backup.backup(settings.store_url, file, force=force)
    except backup.BackupRefused as exc:
        fail(str(exc))
    except backup.BackupError as exc:
        fail(str(exc), 1)
    out.print(
        f"backed up {result.source} to {result.target} ({result.size / 2**20:.1f} MiB)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@db.command("migrate-to")
@config_option
@click.argument("url", envvar="TOCSIN_TARGET_URL")
def db_migrate_to(config_path: Path, url: str) -> None:
    """Copy the SQLite store into the empty PostgreSQL database at URL
    (postgresql+asyncpg://USER@HOST:PORT/DATABASE), checked row by row; then point store.url
    at it. Stop the daemon first. Give the password by PGPASSWORD or ~/.pgpass, or the whole
    URL by $TOCSIN_TARGET_URL, rather than on the command line."""
    settings = load_settings(config_path)

    def said(table: str, rows: int) -> None:
        if rows % 100_000 == 0:
            err.print(f"  {table}: {rows:,} rows", highlight=False)

    try:
        copied = copy_store.migrate_to(settings.store_url, url, progress=said)
    except copy_store.CopyRefused as exc:
        fail(str(exc))
    except copy_store.CopyError as exc:
        fail(f"{exc}; the target was left as it was", 1)
    for table in copied:
        out.print(
            f"{table.table:20} {table.rows:>10,} rows  sha256 {table.digest[:16]}", highlight=False
        )
    total = sum(t.rows for t in copied)
    out.print(
        f"copied {total:,} rows; every row matches the store. Next: set store.url to the new"
        " database and start tocsin.",
        highlight=False,
    )
