"""`tocsin maintenance add|list|remove`: maintenance windows on the configured database (an
admin on the box). The running daemon reads the store's windows every few seconds; the config
file's (`config-N`) are listed too, and changed only there."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.table import Table

from tocsin.api.maintenance import CONFIG_ID, IN_CONFIG, current, window_json
from tocsin.api.query import whole_number
from tocsin.api.schemas import parse_moment
from tocsin.cli.base import (
    config_option,
    fail,
    json_option,
    load_settings,
    main,
    org_option,
    out,
    resolve_org,
    store_call,
    with_database,
)
from tocsin.config import Settings
from tocsin.db import migrate
from tocsin.db.engine import Database
from tocsin.durations import format_duration, parse_duration
from tocsin.monitor import maintenance_store
from tocsin.monitor.config import config_windows, refuse_never_firing, spaces_of
from tocsin.monitor.maintenance import MAX_DURATION, Target, Window, WindowError

# The option a WindowError's field is given by.
OPTIONS = {
    "subject": "--subject",
    "space": "--space",
    "labels": "--label",
    "start": "--start",
    "end": "--end",
    "cron": "--cron",
    "duration": "--duration",
    "reason": "--reason",
}


@main.group()
def maintenance() -> None:
    """Maintenance windows: while one is active, the subjects it covers open no tickets."""


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _duration(option: str, text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except (ValueError, OverflowError) as exc:
        fail(f"{option}: {exc if isinstance(exc, ValueError) else 'too long'}")


def _labels(pairs: tuple[str, ...]) -> dict[str, str] | None:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            fail(f"--label: {pair!r} is not key=value")
        labels[key] = value
    return labels or None


def _check_target(settings: Settings, org: str, target: Target) -> None:
    """A subject or space must be one of the org's in the config."""
    config = settings.config
    spaces = {k.id for k in spaces_of(config.spaces, config.devices) if k.org == org}
    if target.subject is not None:
        ids = {d.id for d in config.devices if d.org == org} | spaces
        ids |= {i.id for i in config.integrations if i.org == org}
        if target.subject not in ids:
            fail(f"--subject: no subject {target.subject!r} in org {org!r}")
    if target.space is not None and target.space not in spaces:
        fail(f"--space: no space {target.space!r} in org {org!r}")


@maintenance.command("add")
@config_option
@org_option
@click.option("--subject", help="The id of a device, integration or space of the org.")
@click.option("--space", help="A space id: the space and every device in it.")
@click.option(
    "--label", "label_pairs", multiple=True, help="key=value; repeat: subjects with all of them."
)
@click.option("--start", help="RFC 3339 with an offset, e.g. 2026-12-24T18:00:00Z.")
@click.option("--end", help="RFC 3339 with an offset, after --start.")
@click.option("--for", "for_", help='From now, for this long: "2h", "90m".')
@click.option("--cron", help='Recurring: five crontab fields, UTC, e.g. "0 2 * * sun".')
@click.option("--duration", help="How long each occurrence of --cron lasts.")
@click.option("--reason", default="", help="Why, as people read it.")
@json_option
def maintenance_add(
    config_path: Path,
    org: str | None,
    subject: str | None,
    space: str | None,
    label_pairs: tuple[str, ...],
    start: str | None,
    end: str | None,
    for_: str | None,
    cron: str | None,
    duration: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Add a maintenance window: one of --subject, --space or --label; --start and --end,
    --for, or --cron and --duration."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    now = datetime.now(UTC)
    start_at, end_at = _moment("--start", start), _moment("--end", end)
    every = _duration("--duration", duration)
    if for_ is not None:
        if start is not None or end is not None:
            fail("--for: give --for, or --start and --end, not both")
        if cron is not None or duration is not None:
            fail("--for: give --for, or --cron and --duration, not both")
        length = _duration("--for", for_)
        assert length is not None
        if length <= timedelta(0) or length > MAX_DURATION:
            fail("--for: must be positive and at most 366 days")
        start_at, end_at = now, now + length
    try:
        window = refuse_never_firing(
            Window(
                id="new",
                org=slug,
                target=Target(subject, space, _labels(label_pairs)),
                reason=reason,
                start=start_at,
                end=end_at,
                cron=cron,
                duration=every,
                source="api",
                created_at=now,
                created_by=f"{getpass.getuser()} (cli)",
            )
        )
    except WindowError as exc:
        option = OPTIONS.get(exc.field, exc.field)
        if for_ is not None and exc.field in ("start", "end"):
            option = "--for"
        fail(f"{option}: {exc.message}")
    _check_target(settings, slug, window.target)
    stored = store_call(
        settings, lambda s: s.writer.run(lambda conn: maintenance_store.add(conn, window))
    )
    if as_json:
        click.echo(json.dumps(window_json(stored, now), indent=2))
        return
    out.print(
        f"added maintenance window {stored.id}: {stored.target.describe()}, {_when(stored)}",
        highlight=False,
        soft_wrap=True,
    )


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _when(window: Window) -> str:
    if window.start is not None and window.end is not None:
        return f"{_at(window.start)} - {_at(window.end)} UTC"
    duration = format_duration(window.duration) if window.duration is not None else "?"
    return f"cron {window.cron} (UTC) for {duration}"


def _state(window: Window, now: datetime) -> str:
    occurrence = window.occurrence(now)
    if occurrence is not None:
        return f"active until {_at(occurrence[1])}"
    upcoming = window.next_change(now)
    return f"next {_at(upcoming)}" if upcoming is not None else "never again"


@maintenance.command("list")
@config_option
@org_option
@json_option
def maintenance_list(config_path: Path, org: str | None, as_json: bool) -> None:
    """The org's maintenance windows: the config file's, then the store's, oldest first."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)

    async def read(database: Database) -> list[Window]:
        if not await migrate.is_current(database):
            fail("the database schema is not current: run `tocsin db upgrade` first", 1)
        return await maintenance_store.load(database.read, slug)

    stored = with_database(settings, read)
    now = datetime.now(UTC)
    configured = [w for w in config_windows(settings.config) if w.org == slug]
    windows = current(configured + stored, now)
    if as_json:
        click.echo(json.dumps([window_json(w, now) for w in windows], indent=2))
        return
    table = Table("id", "covers", "when", "active", "reason")
    for window in windows:
        table.add_row(
            window.id, window.target.describe(), _when(window), _state(window, now), window.reason
        )
    out.print(table)
    if not windows:
        out.print("no maintenance windows")


@maintenance.command("remove")
@config_option
@org_option
@click.argument("window_id", metavar="ID")
def maintenance_remove(config_path: Path, org: str | None, window_id: str) -> None:
    """Remove maintenance window ID (one the API or the CLI added)."""
    settings = load_settings(config_path)
    slug = resolve_org(settings, org)
    if CONFIG_ID.fullmatch(window_id):
        fail(f"{window_id}: {IN_CONFIG}", 1)
    removed = whole_number(window_id)
    if removed:
        removed = store_call(
            settings,
            lambda s: s.writer.run(lambda conn: maintenance_store.remove(conn, slug, window_id)),
        )
    if not removed:
        fail(f"no maintenance window {window_id!r} in org {slug!r}")
    out.print(f"removed maintenance window {window_id}", highlight=False)
