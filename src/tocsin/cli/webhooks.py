"""`tocsin webhooks ...`: endpoints' health, deliveries, redelivery, test pings."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Table

from tocsin.cli.base import (
    config_option,
    fail,
    json_option,
    load_settings,
    main,
    out,
    store_call,
    with_database,
)
from tocsin.config import Settings
from tocsin.db import migrate
from tocsin.db.engine import Database
from tocsin.delivery import ops as webhook_ops
from tocsin.delivery.endpoints import Endpoint, endpoints_from
from tocsin.delivery.outbox import Status as DeliveryStatus
from tocsin.delivery.payload import ping_body, signed_headers
from tocsin.delivery.transport import DeliveryError, Transport
from tocsin.tickets.store import TicketStore

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
    return None


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
