"""`tocsin tickets ...`: work tickets on the configured database (an admin on the box)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from tocsin.cli.base import (
    as_option,
    cli_actor,
    config_option,
    fail,
    json_option,
    load_settings,
    main,
    org_option,
    out,
    resolve_org,
    store_call,
)
from tocsin.config import Settings
from tocsin.tickets.model import Actor, ActorType, Kind, Source, State, Subject, SubjectType, Ticket
from tocsin.tickets.store import TicketFilter
from tocsin.tickets.transitions import Action
from tocsin.tickets.writes import Change, OpenRequest

# -- tickets -------------------------------------------------------------------------------------


@main.group()
def tickets() -> None:
    """Work tickets on the configured database (an admin on the box)."""


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
