"""`tocsin subjects` and `tocsin ping-url`: what the health monitor sees."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from tocsin.api.subjects import group_tickets, no_ticket_because, subject_json
from tocsin.cli.base import (
    config_option,
    fail,
    json_option,
    load_settings,
    main,
    org_option,
    out,
    resolve_org,
    with_database,
)
from tocsin.db import migrate
from tocsin.db.engine import Database
from tocsin.monitor import states
from tocsin.monitor.service import push_secret
from tocsin.probes.push import PushRegistry, PushSpec

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
    groups = group_tickets(rows)
    if as_json:
        click.echo(json.dumps([subject_json(r, base, groups) for r in rows], indent=2))
        return
    table = Table("subject", "health", "since", "last result", "ticket")
    for row in rows:
        health = row.health + (" (flapping)" if row.flapping else "")
        if row.health == "failing":
            health += " (in debounce)"
        detail = str((row.last_result or {}).get("detail", ""))
        why = no_ticket_because(row, groups)
        table.add_row(
            f"{row.key.type}:{row.key.id} {row.name}",
            health,
            row.since.strftime("%Y-%m-%d %H:%M:%S") if row.since else "",
            detail,
            f"#{row.ticket_seq}" if row.ticket_seq else (f"none: {why}" if why else ""),
        )
    out.print(table)
    if not rows:
        out.print("no subjects have been seen yet")


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
