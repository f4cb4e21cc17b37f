"""`tocsin subjects` and `tocsin ping-url`: what the health monitor sees."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from datetime import UTC, datetime
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
from tocsin.config import Settings
from tocsin.db import migrate
from tocsin.db.engine import Database
from tocsin.monitor import maintenance_store, states
from tocsin.monitor.config import (
    config_windows,
    maintenance_subjects,
    spaces_of,
)
from tocsin.monitor.maintenance import Maintenance, Window
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
        rows = await states.load(database.read, slug)
        stored = await maintenance_store.load(database.read, slug)
        return with_maintenance(settings, rows, [*config_windows(settings.config), *stored])

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


def with_maintenance(
    settings: Settings, rows: list[states.StateRow], windows: list[Window]
) -> list[states.StateRow]:
    """The saved rows with `maintenance_until` for those a window holds now, as the daemon's
    live rows have it (the saved state knows the window's id, not when it ends)."""
    config = settings.config
    registry = Maintenance()
    spaces = spaces_of(config.spaces, config.devices)
    registry.set_subjects(
        functools.partial(maintenance_subjects, config.devices, config.integrations, spaces)
    )
    registry.set_windows(windows)
    now = datetime.now(UTC)
    return [
        replace(row, maintenance_until=until)
        if (until := registry.until(row.key, now)) is not None
        else row
        for row in rows
    ]
