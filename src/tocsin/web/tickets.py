"""The Tickets list, ticket detail and the actions on a ticket, as pages.

Reads go through the store's list and get, writes through the store operations the API uses;
a write that breaks a rule (a race lost to someone else's resolve, an empty comment) shows the
API's message on the ticket's page, with what the person typed kept in the form.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from tocsin.api.errors import ApiError, Handler, from_domain_error
from tocsin.api.subjects import group_tickets, no_ticket_because, rows_of
from tocsin.api.tickets import parse_list_query, seq_of
from tocsin.monitor.storm import STORM_HOLD
from tocsin.tickets.model import Kind, Source, State, SubjectType, Ticket
from tocsin.tickets.store import TicketFilter, check_text
from tocsin.tickets.transitions import TRANSITIONS, Action
from tocsin.web import render
from tocsin.web.access import (
    READ,
    WRITE,
    WRITE_OR_WORKFLOW,
    actor,
    can,
    posted,
    text_field,
    visitor,
)
from tocsin.web.context import WebContext
from tocsin.web.sessions import Session
from tocsin.web.site import OrgSite

PAGE_SIZE = 50
MAX_SPACE_FILTER = 30_000  # SQLite binds at most 32,766 values in one statement
TABS = (("open", "Open"), ("in_progress", "In Progress"), ("resolved", "Resolved"), ("all", "All"))
FILTERS = ("source", "kind", "subject_type", "space", "q")
# Who may do what on a ticket: the API's scopes for the same operation.
NEEDS = {
    "start": WRITE,
    "resolve": WRITE_OR_WORKFLOW,
    "reopen": WRITE,
    "comment": WRITE_OR_WORKFLOW,
    "edit": WRITE,
}


def _filters(request: web.Request, site: OrgSite) -> tuple[TicketFilter, str | None, str]:
    """The list's filters from the query string (the API's parser, and `space`), the cursor
    and the tab."""
    query = MultiDict(request.query)
    space = query.popall("space", [""])[-1] or None
    filters, _, cursor = parse_list_query(query)
    if space is not None:
        if space not in site.spaces:
            raise ApiError(422, "invalid_value", f"space: no space {space!r}", "space")
        members = tuple((ref.type, ref.id) for ref in site.in_space(space))
        if len(members) > MAX_SPACE_FILTER:  # past what one query may list
            raise ApiError(
                422,
                "invalid_value",
                f"space: {space!r} holds {len(members):,} subjects, more than the filter takes "
                f"({MAX_SPACE_FILTER:,}): search or filter by subject type instead",
                "space",
            )
        filters = replace(filters, subjects=members)
    states_ = filters.states
    tab = states_[0].value if len(states_) == 1 else ("all" if not states_ else "")
    return filters, cursor, tab


def _link(org: str, params: dict[str, str]) -> str:
    kept = {k: v for k, v in params.items() if v}
    return f"/orgs/{org}/tickets" + (f"?{urlencode(kept)}" if kept else "")


async def list_page(request: web.Request) -> web.Response:
    context, session = await visitor(request)
    org = session.org
    site = context.site.org(org)
    filters, cursor, tab = _filters(request, site)
    store = context.api.store
    page = await store.list_tickets(org, filters, limit=PAGE_SIZE, cursor=cursor)
    # The tabs' counts leave the state out: one count serves every tab of these filters.
    counts = await context.counts.get(
        (org, replace(filters, states=())), lambda: store.count_by_state(org, filters)
    )
    last = await store.last_events([t.id for t in page.tickets])
    chosen = {name: request.query.get(name, "") for name in FILTERS}
    tabs = [
        {
            "key": key,
            "label": label,
            "count": sum(counts.values()) if key == "all" else counts[State(key)],
            "href": _link(org, {**chosen, "state": "" if key == "all" else key}),
            "current": key == tab,
        }
        for key, label in TABS
    ]
    state_param = "" if tab == "all" else ",".join(s.value for s in filters.states)
    rows = [_row(ticket, site, last.get(ticket.id)) for ticket in page.tickets]
    return render.page(
        request,
        "tickets.html",
        session,
        {
            "org": site,
            "tabs": tabs,
            "rows": rows,
            "chosen": chosen,
            "state": state_param,
            "kinds": [(k.value, k.display) for k in Kind],
            "sources": [s.value for s in Source],
            "subject_types": [t.value for t in SubjectType],
            "next_href": _link(org, {**chosen, "state": state_param, "cursor": page.next_cursor})
            if page.next_cursor
            else None,
            "first_href": _link(org, {**chosen, "state": state_param}) if cursor else None,
        },
    )


def _row(ticket: Ticket, site: OrgSite, last: Any) -> dict[str, Any]:
    space = site.space_of(ticket.subject.type.value, ticket.subject.id)
    return {"ticket": ticket, "space": site.space_name(space), "last": last}


def _actions(ticket: Ticket, session: Session) -> list[str]:
    """The actions legal on the ticket now that this person may take, in the page's order."""
    legal = [a.value for a in Action if ticket.state in TRANSITIONS[a].sources]
    return [a for a in (*legal, "comment", "edit") if can(session, NEEDS[a])]


async def _members(context: WebContext, ticket: Ticket, site: OrgSite) -> list[dict[str, Any]]:
    """For a Multiple devices offline ticket: the subjects it covers, as the monitor sees
    them now (a space's devices, or those the org's storm holds)."""
    if ticket.kind != Kind.MULTIPLE_DEVICES_OFFLINE.value:
        return []
    rows = await context.subjects.get(ticket.org, lambda: rows_of(context.api, ticket.org))
    groups = group_tickets(rows)
    if ticket.subject.type is SubjectType.SPACE:
        wanted = {
            (ref.type, ref.id) for ref in site.in_space(ticket.subject.id) if ref.type != "space"
        }
        chosen = [r for r in rows if (r.key.type, r.key.id) in wanted]
    elif groups.get(STORM_HOLD) == ticket.seq:  # the org's storm ticket: whom it holds now
        chosen = [r for r in rows if r.state.get("held_by") == STORM_HOLD]
    else:
        chosen = []
    return [{"row": r, "because": no_ticket_because(r, groups)} for r in chosen]


async def _detail(
    request: web.Request,
    context: WebContext,
    session: Session,
    seq: int,
    *,
    error: str | None = None,
    status: int = 200,
    draft: dict[str, str] | None = None,
    preview: str | None = None,
) -> web.Response:
    org = session.org
    site = context.site.org(org)
    ticket, timeline = await context.api.store.get(org, seq)
    notice = {
        "created": f"Your report opened #{seq}.",
        "commented": f"#{seq} was already open for this subject: your report was added to it "
        "as a comment.",
    }.get(request.query.get("reported", ""))
    return render.page(
        request,
        "ticket.html",
        session,
        {
            "org": site,
            "ticket": ticket,
            "timeline": timeline,
            "space": site.space_name(site.space_of(ticket.subject.type.value, ticket.subject.id)),
            "actions": _actions(ticket, session),
            "members": await _members(context, ticket, site),
            "error": error,
            "notice": notice,
            "draft": draft or {},
            "preview": preview,
            "page_url": f"/orgs/{org}/tickets/{seq}",
        },
        status=status,
    )


async def detail_page(request: web.Request) -> web.Response:
    context, session = await visitor(request, READ)
    return await _detail(request, context, session, seq_of(request))


def _action_handler(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        context, session, form = await posted(request, NEEDS[name])
        seq = seq_of(request)
        store = context.api.store
        draft: dict[str, str] = {}
        try:
            if name == "comment":
                body = text_field(form, "body", required=True) or ""
                draft["body"] = body
                await store.comment(session.org, seq, actor(session), body)
            elif name == "edit":
                description = text_field(form, "description", required=True) or ""
                draft["description"] = description
                if "preview" in form:  # show it rendered, write nothing yet
                    check_text("description", description, allow_empty=True)
                    return await _detail(
                        request, context, session, seq, draft=draft, preview=description
                    )
                await store.edit_description(session.org, seq, actor(session), description)
            else:
                comment = text_field(form, "comment") or None
                draft[f"{name}_comment"] = comment or ""
                if comment is not None and not comment.strip():
                    comment = None
                await store.transition(session.org, seq, Action(name), actor(session), comment)
        except ApiError:
            raise
        except Exception as exc:
            mapped = from_domain_error(exc)
            if mapped is None or mapped.status == 404:
                raise
            # Lost a race, or a value the store refused: the API's words, on the ticket.
            return await _detail(
                request,
                context,
                session,
                seq,
                error=mapped.message,
                status=mapped.status,
                draft=draft,
            )
        raise web.HTTPSeeOther(f"/orgs/{session.org}/tickets/{seq}#timeline")

    handler.__name__ = f"{name}_action"
    return handler


ACTIONS = {name: _action_handler(name) for name in NEEDS}
