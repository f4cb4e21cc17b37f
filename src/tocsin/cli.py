"""The command line: `tocsin run`, `check-config`, `db upgrade|backup` and `tickets ...`.

Exit status: 0 success, 2 bad usage or invalid input (config, ticket number, transition),
1 any other failure. Signals are handled here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

import click
import structlog
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from tocsin import app, logs
from tocsin.api.subjects import subject_json
from tocsin.config import ConfigError, Settings, load
from tocsin.db import backup, migrate
from tocsin.db.engine import Database, StoreUrlError, open_database
from tocsin.db.writer import StoreUnavailable
from tocsin.delivery import ops as webhook_ops
from tocsin.delivery.endpoints import Endpoint, endpoints_from
from tocsin.delivery.outbox import Status as DeliveryStatus
from tocsin.delivery.payload import ping_body, signed_headers
from tocsin.delivery.transport import DeliveryError, Transport
from tocsin.monitor import states
from tocsin.monitor.service import push_secret
from tocsin.probes.push import PushRegistry, PushSpec
from tocsin.tickets.errors import IllegalTransition, InvalidTicket, TicketError
from tocsin.tickets.model import Actor, ActorType, Kind, Source, State, Subject, SubjectType, Ticket
from tocsin.tickets.store import TicketFilter, TicketStore
from tocsin.tickets.transitions import Action
from tocsin.tickets.writes import Change, OpenRequest

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


def load_settings(path: Path) -> Settings:
    try:
        return load(path)
    except ConfigError as exc:
        err.print(
            f"[bold red]{escape(str(path))}: invalid config[/]", highlight=False, soft_wrap=True
        )
        for problem in exc.problems:
            # One line per problem whatever the width, so each keeps its key path (and grep works).
            err.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="tocsin")
def main() -> None:
    """tocsin: the on-site health monitor that opens one ticket per real outage."""


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the daemon: SIGTERM or SIGINT stops it."""
    settings = load_settings(config_path)
    logs.configure(settings.config.log.level, settings.config.log.format)

    async def serve() -> None:
        stop = asyncio.Event()
        reloads: asyncio.Queue[Settings] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_stop() -> None:
            stop.set()
            # A stop should take a second or two; if it hangs, say where.
            loop.call_later(STOP_REPORT_AFTER, report_stuck_tasks)

        def on_reload() -> None:
            new = reload_settings(config_path)
            if new is not None:
                logs.configure(new.config.log.level, new.config.log.format)
                reloads.put_nowait(new)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        loop.add_signal_handler(signal.SIGHUP, on_reload)
        await app.run(settings, stop, reloads=reloads)

    try:
        asyncio.run(serve())
    except StoreUrlError as exc:
        fail(f"store.url: {exc}")
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", 1)


STOP_REPORT_AFTER = 5.0


def reload_settings(path: Path) -> Settings | None:
    """The config at `path` for a reload (SIGHUP); None, with every problem logged, when it is
    invalid: the running config then stays."""
    log = structlog.get_logger("tocsin")
    try:
        return load(path)
    except ConfigError as exc:
        log.error(
            "config reload refused: the new config is invalid; keeping the running one",
            config=str(path),
            problems=[str(p) for p in exc.problems],
        )
        return None


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


# -- tickets -------------------------------------------------------------------------------------


@main.group()
def tickets() -> None:
    """Work tickets on the configured database (an admin on the box)."""


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


@tickets.command("list")
@config_option
@org_option
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in State]))
@click.option("--source", type=click.Choice([s.value for s in Source]))
@click.option("--kind")
@click.option("-q", "query", help="Text search.")
@click.option("--limit", default=50, type=click.IntRange(1, 200), show_default=True)
@json_option
def tickets_list(
    config_path: Path,
    org: str | None,
    states: tuple[str, ...],
    source: str | None,
    kind: str | None,
    query: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, newest first."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    filters = TicketFilter(
        states=tuple(State(s) for s in states),
        source=Source(source) if source else None,
        kind=kind,
        q=query,
    )
    page = store_call(settings, lambda s: s.list_tickets(slug, filters, limit=limit))
    base = settings.config.server.base_url
    if as_json:
        click.echo(json.dumps([t.to_json(base) for t in page.tickets], indent=2))
        return
    table = Table("#", "state", "source", "kind", "subject", "opened", "updated")
    for t in page.tickets:
        table.add_row(
            f"#{t.seq}",
            t.state.display,
            t.source.value,
            t.kind,
            f"{t.subject.type.value}:{t.subject.id} {t.subject.name}",
            t.opened_at.strftime("%Y-%m-%d %H:%M"),
            t.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)
    if not page.tickets:
        out.print("no tickets")


@tickets.command("show")
@config_option
@org_option
@click.argument("seq", type=click.IntRange(min=1))
@json_option
def tickets_show(config_path: Path, org: str | None, seq: int, as_json: bool) -> None:
    """Show one ticket with its timeline."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    ticket, timeline = store_call(settings, lambda s: s.get(slug, seq))
    if as_json:
        body = ticket.to_json(settings.config.server.base_url)
        body["timeline"] = [e.to_json() for e in timeline]
        click.echo(json.dumps(body, indent=2))
        return
    print_ticket(ticket)
    table = Table("when", "event", "by", "detail")
    for event in timeline:
        detail = " / ".join(f"{k}: {v}" for k, v in event.payload.items())
        table.add_row(
            event.at.strftime("%Y-%m-%d %H:%M:%S"),
            event.type.value,
            f"{event.actor.name} ({event.actor.type.value})",
            detail,
        )
    out.print(table)


def print_ticket(ticket: Ticket) -> None:
    out.print(
        f"[bold]#{ticket.seq}[/] {ticket.state.display}  {ticket.kind}  ({ticket.source.value})",
        highlight=False,
    )
    out.print(
        f"subject: {ticket.subject.type.value} {ticket.subject.id} ({ticket.subject.name})",
        highlight=False,
        markup=False,
    )
    if ticket.description:
        out.print(ticket.description, markup=False, highlight=False)


@tickets.command("open")
@config_option
@org_option
@click.option("--subject-type", type=click.Choice([t.value for t in SubjectType]), required=True)
@click.option("--subject-id", required=True)
@click.option("--subject-name", required=True)
@click.option(
    "--kind",
    help="A built-in kind (default user_report) or, with --source workflow, a free-form one.",
)
@click.option("--description", default="")
@click.option(
    "--source", type=click.Choice(["user", "workflow"]), default="user", show_default=True
)
@click.option("--dedup-key")
@as_option
@json_option
def tickets_open(
    config_path: Path,
    org: str | None,
    subject_type: str,
    subject_id: str,
    subject_name: str,
    kind: str | None,
    description: str,
    source: str,
    dedup_key: str | None,
    actor_name: str | None,
    as_json: bool,
) -> None:
    """Open a ticket (a user report, or on a workflow's behalf)."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    origin = Source(source)
    if origin is Source.WORKFLOW:
        if kind is None:
            fail("--kind is required with --source workflow")
        actor = Actor(ActorType.WORKFLOW, actor_name or "cli")
    else:
        actor = cli_actor(actor_name)
    request = OpenRequest(
        org=slug,
        source=origin,
        subject=Subject(SubjectType(subject_type), subject_id, subject_name),
        kind=kind or Kind.USER_REPORT.value,
        description=description,
        actor=actor,
        dedup_key=dedup_key,
    )
    change = store_call(settings, lambda s: s.open(request))
    report(settings, change, as_json, f"{change.outcome.value if change.outcome else ''}")


def report(settings: Settings, change: Change, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(json.dumps(change.ticket.to_json(settings.config.server.base_url), indent=2))
    else:
        out.print(f"#{change.ticket.seq} {change.ticket.state.display} ({what})", highlight=False)


def _transition_command(action: Action, help_text: str) -> None:
    @tickets.command(action.value, help=help_text)
    @config_option
    @org_option
    @click.argument("seq", type=click.IntRange(min=1))
    @click.option("--comment", help="A note for the timeline.")
    @as_option
    @json_option
    def command(
        config_path: Path,
        org: str | None,
        seq: int,
        comment: str | None,
        actor_name: str | None,
        as_json: bool,
    ) -> None:
        settings = load_settings(config_path)
        slug = resolve_org(settings, org)
        change = store_call(
            settings, lambda s: s.transition(slug, seq, action, cli_actor(actor_name), comment)
        )
        report(settings, change, as_json, action.value)


_transition_command(Action.START, "Open -> In Progress: you are on it.")
_transition_command(Action.RESOLVE, "Open or In Progress -> Resolved.")
_transition_command(Action.REOPEN, "Resolved -> Open.")


@tickets.command("comment")
@config_option
@org_option
@click.argument("seq", type=click.IntRange(min=1))
@click.argument("body")
@as_option
@json_option
def tickets_comment(
    config_path: Path, org: str | None, seq: int, body: str, actor_name: str | None, as_json: bool
) -> None:
    """Add a comment (markdown) to ticket SEQ."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    change = store_call(settings, lambda s: s.comment(slug, seq, cli_actor(actor_name), body))
    report(settings, change, as_json, "commented")


@tickets.command("edit")
@config_option
@org_option
@click.argument("seq", type=click.IntRange(min=1))
@click.option("--description", required=True, help="The new markdown description.")
@as_option
@json_option
def tickets_edit(
    config_path: Path,
    org: str | None,
    seq: int,
    description: str,
    actor_name: str | None,
    as_json: bool,
) -> None:
    """Replace ticket SEQ's description (the edit lands on the timeline)."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    change = store_call(
        settings, lambda s: s.edit_description(slug, seq, cli_actor(actor_name), description)
    )
    report(settings, change, as_json, "edited")


# -- subjects ------------------------------------------------------------------------------------


@main.command("subjects")
@config_option
@org_option
@json_option
def subjects_command(config_path: Path, org: str | None, as_json: bool) -> None:
    """Each monitored subject's health, since when, last probe result and open ticket."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)

    async def read(database: Database) -> list[states.StateRow]:
        if not await migrate.is_current(database):
            fail("the database schema is not current: run `tocsin db upgrade` first", 1)
        return await states.load(database.read, slug)

    rows = with_database(settings, read)
    base = settings.config.server.base_url
    if as_json:
        click.echo(json.dumps([subject_json(r, base) for r in rows], indent=2))
        return
    table = Table("subject", "health", "since", "last result", "ticket")
    for row in rows:
        health = row.health + (" (flapping)" if row.flapping else "")
        if row.health == "failing":
            health += " (in debounce)"
        detail = str((row.last_result or {}).get("detail", ""))
        table.add_row(
            f"{row.key.type}:{row.key.id} {row.name}",
            health,
            row.since.strftime("%Y-%m-%d %H:%M:%S") if row.since else "",
            detail,
            f"#{row.ticket_seq}" if row.ticket_seq else "",
        )
    out.print(table)
    if not rows:
        out.print("no subjects have been seen yet")


# -- webhooks ------------------------------------------------------------------------------------


@main.group()
def webhooks() -> None:
    """Webhook endpoints and their deliveries (on the configured database)."""


def webhook_endpoint(settings: Settings, name: str) -> Endpoint:
    for endpoint in endpoints_from(settings):
        if endpoint.name == name:
            return endpoint
    known = ", ".join(w.name for w in settings.config.webhooks) or "none"
    fail(f"no webhook {name!r} in the config (known: {known})")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@webhooks.command("list")
@config_option
@json_option
def webhooks_list(config_path: Path, as_json: bool) -> None:
    """Each configured endpoint and its health: ok, failing (since), disabled; backlog."""
    settings = load_settings(config_path)
    names = [w.name for w in settings.config.webhooks]

    async def read(database: Database) -> list[webhook_ops.EndpointHealth]:
        if not await migrate.is_current(database):
            fail("the database schema is not current: run `tocsin db upgrade` first", 1)
        return await webhook_ops.endpoint_health(database.read, names)

    healths = with_database(settings, read) if names else []
    if as_json:
        click.echo(json.dumps([h.to_json() for h in healths], indent=2))
        return
    configs = {w.name: w for w in settings.config.webhooks}
    table = Table("name", "format", "state", "since", "last success", "pending", "failed", "error")
    for health in healths:
        since = health.disabled_at or health.failing_since
        state = health.state
        if health.disabled_reason:
            state += f" ({health.disabled_reason})"
        table.add_row(
            health.name,
            configs[health.name].format,
            state,
            _when(since),
            _when(health.last_success_at),
            str(health.counts.get("pending", 0) + health.counts.get("delivering", 0)),
            str(health.counts.get("failed", 0)),
            health.last_error or "",
        )
    out.print(table)
    if not healths:
        out.print("no webhooks in the config")


@webhooks.command("deliveries")
@config_option
@click.option("--failed", is_flag=True, help="Only deliveries that gave up (redeliver them).")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in DeliveryStatus])
)
@click.option("--endpoint", help="Only this webhook's deliveries.")
@click.option("--org", help="Only this org's deliveries.")
@click.option("--limit", default=50, type=click.IntRange(1, 1000), show_default=True)
@json_option
def webhooks_deliveries(
    config_path: Path,
    failed: bool,
    statuses: tuple[str, ...],
    endpoint: str | None,
    org: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Deliveries, newest first."""
    settings = load_settings(config_path)
    wanted = [*statuses, *([DeliveryStatus.FAILED.value] if failed else [])]

    async def read(database: Database) -> list[webhook_ops.DeliveryView]:
        if not await migrate.is_current(database):
            fail("the database schema is not current: run `tocsin db upgrade` first", 1)
        rows, _ = await webhook_ops.list_deliveries(
            database.read, org=org, endpoint=endpoint, statuses=wanted, limit=limit
        )
        return rows

    rows = with_database(settings, read)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    table = Table("id", "endpoint", "trigger", "ticket", "status", "attempts", "last", "next/done")
    for row in rows:
        last = str(row.last_status or "") + (f" {row.last_error}" if row.last_error else "")
        done = row.delivered_at if row.status == "delivered" else None
        upcoming = row.next_attempt_at if row.status == "pending" else None
        table.add_row(
            str(row.id),
            row.endpoint,
            row.type,
            f"{row.org} #{row.ticket_seq}",
            row.status,
            str(row.attempts),
            last.strip(),
            _when(done or upcoming),
        )
    out.print(table)
    if not rows:
        out.print("no deliveries")


@webhooks.command("redeliver")
@config_option
@click.argument("delivery_id", type=click.IntRange(min=1))
def webhooks_redeliver(config_path: Path, delivery_id: int) -> None:
    """Send delivery DELIVERY_ID again now (same webhook-id, a fresh retry schedule); the
    running daemon picks it up within its poll interval."""
    settings = load_settings(config_path)

    async def write(store: TicketStore) -> int:
        now = datetime.now(UTC)
        return await store.writer.run(lambda conn: webhook_ops.redeliver(conn, delivery_id, now))

    try:
        store_call(settings, write)
    except webhook_ops.WebhookOpsError as exc:
        fail(str(exc), 1 if isinstance(exc, webhook_ops.DeliveryInFlight) else 2)
    out.print(f"delivery {delivery_id} will be sent again", highlight=False)


@webhooks.command("enable")
@config_option
@click.argument("name")
def webhooks_enable(config_path: Path, name: str) -> None:
    """Enable a disabled webhook again: its kept backlog is delivered, in order."""
    settings = load_settings(config_path)
    webhook_endpoint(settings, name)

    async def write(store: TicketStore) -> bool:
        now = datetime.now(UTC)
        return await store.writer.run(lambda conn: webhook_ops.enable(conn, name, now))

    changed = store_call(settings, write)
    out.print(f"webhook {name} {'enabled' if changed else 'was not disabled'}", highlight=False)


@webhooks.command("test")
@config_option
@click.argument("name")
def webhooks_test(config_path: Path, name: str) -> None:
    """Send webhook NAME a signed test message (type webhook.test) and show the answer."""
    settings = load_settings(config_path)
    endpoint = webhook_endpoint(settings, name)

    async def ping() -> tuple[int | None, str]:
        transport = Transport(limit=1)
        now = datetime.now(UTC)
        body = ping_body(endpoint.name, now, endpoint.format)
        msg_id = f"msg_test_{uuid.uuid4().hex}"
        headers = signed_headers(endpoint.keys, msg_id, now, body, endpoint.headers)
        try:
            answer = await transport.post(
                endpoint.url, body, headers, endpoint.timeout.total_seconds()
            )
            return answer.status, f"{answer.latency * 1000:.0f} ms"
        except DeliveryError as exc:
            return exc.status, exc.message
        finally:
            await transport.close()

    status, detail = asyncio.run(ping())
    if status is not None and 200 <= status < 300:
        out.print(f"webhook {name}: HTTP {status} in {detail}", highlight=False)
        return
    fail(f"webhook {name}: {detail}", 1)


@main.command("ping-url")
@config_option
@org_option
@click.argument("device_id")
def ping_url(config_path: Path, org: str | None, device_id: str) -> None:
    """Print the secret heartbeat URL of push device DEVICE_ID (GET or POST it; add
    ?status=fail to report a failure)."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    device = next((d for d in settings.config.devices if d.org == slug and d.id == device_id), None)
    if device is None or not isinstance(device.probe, PushSpec):
        fail(f"no push device {device_id!r} in org {slug!r}")
    registry = PushRegistry(push_secret(settings))
    key = registry.register(
        device.key, device.probe, now_mono=0.0, base_dir=settings.base_dir, environ=settings.environ
    )
    click.echo(f"{settings.config.server.base_url}/ping/{key}")


# -- demo ----------------------------------------------------------------------------------------


@main.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="The API's HOST:PORT.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the database, config and secrets here (default: a temporary folder, removed).",
)
@click.option("--mqtt-host", default="127.0.0.1", show_default=True, help="An MQTT broker to use.")
@click.option("--mqtt-port", default=1883, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=10),
    help="Time scale of the scenario and the windows (2: twice as fast).",
)
def demo(
    duration: float | None,
    listen: str,
    state_dir: Path | None,
    mqtt_host: str,
    mqtt_port: int,
    speed: float,
) -> None:
    """Run tocsin on a simulated site: devices fail and recover, tickets open, auto-resolve and
    reopen, and a webhook receiver prints each signed delivery. SIGTERM or SIGINT stops it."""
    from tocsin.demo.run import DemoError, DemoOptions, run_demo

    logs.configure("error", "auto")  # the receiver's lines tell the story
    options = DemoOptions(
        listen=listen,
        state_dir=state_dir,
        duration=duration,
        speed=speed,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
    )

    def say(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            stop.set()
            loop.call_later(STOP_REPORT_AFTER, report_stuck_tasks)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await run_demo(options, stop, out=say)

    try:
        asyncio.run(serve())
    except DemoError as exc:
        fail(str(exc))
    except ConfigError as exc:  # a bug in the demo's own config, not the user's
        fail(f"the demo's config is invalid: {exc}", 1)
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", 1)
