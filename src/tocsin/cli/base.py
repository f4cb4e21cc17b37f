"""Shared pieces of the command line: the `tocsin` group, options, error exits, and running
work on the configured database."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from tocsin.config import ConfigError, Settings, load
from tocsin.db import migrate
from tocsin.db.engine import Database, StoreUrlError, open_database
from tocsin.db.writer import StoreUnavailable
from tocsin.tickets.errors import IllegalTransition, InvalidTicket, TicketError
from tocsin.tickets.model import Actor, ActorType
from tocsin.tickets.store import TicketStore

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

config_option = click.option(
    "--config",
    "config_path",
    envvar="TOCSIN_CONFIG",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The TOML config file (or $TOCSIN_CONFIG).",
)


def fail(message: str, code: int = 2) -> NoReturn:
    # escape: messages quote what the operator typed, which may look like rich markup ("[/x]")
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def load_settings(path: Path, *, keep_source: bool = False) -> Settings:
    try:
        return load(path, keep_source=keep_source)
    except ConfigError as exc:
        report_invalid(path, exc)


def report_invalid(path: Path, exc: ConfigError) -> NoReturn:
    """Say what is wrong with the config at `path`, one line a problem, and exit 2."""
    err.print(f"[bold red]{escape(str(path))}: invalid config[/]", highlight=False, soft_wrap=True)
    for problem in exc.problems:
        # One line per problem whatever the width, so each keeps its key path (and grep works).
        err.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="tocsin")
def main() -> None:
    """tocsin: the on-site health monitor that opens one ticket per real outage."""


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        try:
            database = open_database(settings.store_url)
        except StoreUrlError as exc:
            fail(f"store.url: {exc}")
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(go())
    except InvalidTicket as exc:
        fail(f"{exc.field}: {exc}")
    except (TicketError, IllegalTransition) as exc:  # IllegalTransition is not a TicketError
        fail(str(exc))
    except StoreUnavailable as exc:
        fail(str(exc), 1)
    except SQLAlchemyError as exc:  # the database itself failed: say so without a traceback
        fail(f"the database failed: {type(exc).__name__}: {exc.args[0] if exc.args else ''}", 1)


org_option = click.option("--org", help="The org's slug; may be left out when there is one org.")
as_option = click.option("--as", "actor_name", help="Your name on the timeline (default: login).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@contextlib.asynccontextmanager
async def ticket_store(database: Database) -> AsyncIterator[TicketStore]:
    if not await migrate.is_current(database):
        fail("the database schema is not current: run `tocsin db upgrade` first", 1)
    store = TicketStore(database)
    store.start()
    try:
        yield store
    finally:
        await store.close()


def resolve_org(settings: Settings, org: str | None) -> str:
    slugs = [o.slug for o in settings.config.orgs]
    if org is None:
        if len(slugs) == 1:
            return slugs[0]
        fail("--org is required: the config has " + (", ".join(slugs) or "no orgs"))
    if org not in slugs:
        fail(f"--org: no org {org!r} in the config (known: {', '.join(slugs) or 'none'})")
    return org


def cli_actor(name: str | None) -> Actor:
    return Actor(ActorType.USER, name or f"{getpass.getuser()} (cli)")


def store_call(settings: Settings, call: Callable[[TicketStore], Awaitable[T]]) -> T:
    async def work(database: Database) -> T:
        async with ticket_store(database) as store:
            return await call(store)

    return with_database(settings, work)
