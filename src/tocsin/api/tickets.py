"""Ticket handlers: list, read, open, start, resolve, reopen, comment, edit."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiMapping

from tocsin.api.auth import actor_for, authenticate, require
from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.api.errors import ApiError, Handler, read_json_object
from tocsin.api.query import enum_value, enum_values, limit, refuse_unknown, whole_number
from tocsin.api.schemas import CommentIn, EditIn, OpenTicketIn, TransitionIn
from tocsin.config import ApiToken
from tocsin.tickets.model import Actor, ActorType, Kind, Source, State, Subject, SubjectType
from tocsin.tickets.store import TicketFilter
from tocsin.tickets.transitions import Action
from tocsin.tickets.writes import OpenOutcome, OpenRequest

LIST_PARAMS = frozenset(
    {"state", "source", "kind", "subject_type", "subject_id", "q", "limit", "cursor"}
)
MAX_LIMIT = 200


def _context(request: web.Request) -> ApiContext:
    return request.app[API_CONTEXT]


def _caller(request: web.Request, needs: frozenset[str]) -> tuple[ApiContext, ApiToken, str]:
    context = _context(request)
    token = authenticate(request, context.tokens)
    org = request.match_info["org"]
    require(token, org, needs)
    return context, token, org


def seq_of(request: web.Request) -> int:
    """The ticket number in the path; a 400 naming `seq` for anything but one."""
    raw = request.match_info["seq"]
    if not whole_number(raw):
        raise ApiError(
            400, "invalid_seq", f"a ticket number is a positive integer, not {raw!r}", "seq"
        )
    return int(raw)


async def _detail(context: ApiContext, org: str, seq: int, status: int = 200) -> web.Response:
    ticket, timeline = await context.store.get(org, seq)
    body = ticket.to_json(context.base_url)
    body["timeline"] = [event.to_json() for event in timeline]
    return web.json_response(body, status=status)


async def list_tickets(request: web.Request) -> web.Response:
    context, _, org = _caller(request, frozenset({"read"}))
    filters, limit, cursor = parse_list_query(request.query)
    page = await context.store.list_tickets(org, filters, limit=limit, cursor=cursor)
    return web.json_response(
        {
            "tickets": [t.to_json(context.base_url) for t in page.tickets],
            "next_cursor": page.next_cursor,
        }
    )


def parse_list_query(query: MultiMapping[str]) -> tuple[TicketFilter, int, str | None]:
    refuse_unknown(query, LIST_PARAMS)
    subject_type = enum_value(query, "subject_type", SubjectType)
    filters = TicketFilter(
        states=tuple(enum_values(query, "state", State)),
        source=enum_value(query, "source", Source),
        kind=query.get("kind") or None,
        subject_type=subject_type.value if subject_type else None,
        subject_id=query.get("subject_id") or None,
        q=query.get("q") or None,
    )
    return filters, limit(query, MAX_LIMIT), query.get("cursor") or None


async def get_ticket(request: web.Request) -> web.Response:
    context, _, org = _caller(request, frozenset({"read"}))
    return await _detail(context, org, seq_of(request))


async def open_ticket(request: web.Request) -> web.Response:
    context, token, org = _caller(request, frozenset({"write", "workflow"}))
    body = OpenTicketIn.model_validate_json(await read_json_object(request))
    if body.source is Source.USER:
        if token.scope != "write":
            raise ApiError(
                403, "forbidden", "a user report needs a write token (a person's)", "source"
            )
        require_report_issue(context, org)
        kind = body.kind or Kind.USER_REPORT.value
        actor = Actor(ActorType.USER, body.actor_name or token.name)
    else:
        if body.kind is None:
            raise ApiError(422, "missing_field", "kind is required for a workflow's ticket", "kind")
        kind = body.kind
        actor = Actor(ActorType.WORKFLOW, body.actor_name or token.name)
    change = await context.store.open(
        OpenRequest(
            org=org,
            source=body.source,
            subject=Subject(body.subject.type, body.subject.id, body.subject.name),
            kind=kind,
            description=body.description,
            actor=actor,
            dedup_key=body.dedup_key,
        )
    )
    status = 201 if change.outcome is OpenOutcome.CREATED else 200
    response = await _detail(context, org, change.ticket.seq, status)
    response.headers["Location"] = f"/api/v1/orgs/{org}/tickets/{change.ticket.seq}"
    return response


def require_report_issue(context: ApiContext, org: str) -> None:
    """People file tickets (Report issue) only where the org enables it: else a 403."""
    org_config = context.org(org)
    if org_config is None or not org_config.report_issue:
        raise ApiError(
            403,
            "report_issue_disabled",
            f"the Report issue flow is not enabled for org {org!r}",
            "source",
        )


def _transition_handler(action: Action, needs: frozenset[str]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        context, token, org = _caller(request, needs)
        seq = seq_of(request)
        body = TransitionIn.model_validate_json(await read_json_object(request))
        actor = actor_for(token, body.actor_name)
        await context.store.transition(org, seq, action, actor, body.comment)
        return await _detail(context, org, seq)

    handler.__name__ = f"{action.value}_ticket"
    return handler


start_ticket = _transition_handler(Action.START, frozenset({"write"}))
resolve_ticket = _transition_handler(Action.RESOLVE, frozenset({"write", "workflow"}))
reopen_ticket = _transition_handler(Action.REOPEN, frozenset({"write"}))


async def add_comment(request: web.Request) -> web.Response:
    context, token, org = _caller(request, frozenset({"write", "workflow"}))
    seq = seq_of(request)
    body = CommentIn.model_validate_json(await read_json_object(request))
    await context.store.comment(org, seq, actor_for(token, body.actor_name), body.body)
    return await _detail(context, org, seq, 201)


async def edit_ticket(request: web.Request) -> web.Response:
    context, token, org = _caller(request, frozenset({"write"}))
    seq = seq_of(request)
    body = EditIn.model_validate_json(await read_json_object(request))
    await context.store.edit_description(
        org, seq, actor_for(token, body.actor_name), body.description
    )
    return await _detail(context, org, seq)
