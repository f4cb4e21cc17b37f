"""Report issue: a person picks a subject (searched by name or id) or describes one, and says
what is wrong. The result is the API's: a new user_report ticket, or a comment on the
subject's unresolved ticket; the ticket's page then says which."""

from __future__ import annotations

import hashlib
import re

from aiohttp import web

from tocsin.api.errors import ApiError
from tocsin.api.tickets import require_report_issue
from tocsin.tickets.model import Kind, Source, Subject, SubjectType
from tocsin.tickets.writes import OpenOutcome, OpenRequest
from tocsin.web import render
from tocsin.web.access import WRITE, actor, posted, text_field, visitor
from tocsin.web.context import WebContext
from tocsin.web.site import OrgSite, SubjectRef

MATCHES = 20  # subjects a search shows at most
MAX_NAME = 200


def _enabled(context: WebContext, org: str) -> OrgSite:
    require_report_issue(context.api, org)
    return context.site.org(org)


def search(site: OrgSite, text: str) -> list[SubjectRef]:
    """Subjects whose name or id contains `text` (case-insensitive), names first."""
    needle = text.casefold().strip()
    if not needle:
        return []
    found = [r for r in site.subjects.values() if needle in r.name.casefold()]
    if len(found) < MATCHES:
        found += [
            r
            for r in site.subjects.values()
            if needle in r.id.casefold() and needle not in r.name.casefold()
        ]
    return found[:MATCHES]


async def report_form(request: web.Request) -> web.Response:
    context, session = await visitor(request, WRITE)
    site = _enabled(context, session.org)
    find = request.query.get("find", "")
    return render.page(
        request,
        "report.html",
        session,
        {"org": site, "find": find, "matches": search(site, find), "draft": {}, "error": None},
    )


def _described(name: str) -> Subject:
    """A subject the config does not know, as a person named it: type other, its id made from
    the name (in any script), so two reports of the same thing meet on one ticket."""
    words = re.sub(r"[\W_]+", "-", name.casefold()).strip("-")
    if not words:  # only punctuation: the name's digest keeps different names apart
        words = hashlib.sha256(name.casefold().encode()).hexdigest()[:16]
    return Subject(SubjectType.OTHER, f"reported-{words[:110]}", name)


async def report(request: web.Request) -> web.StreamResponse:
    context, session, form = await posted(request, WRITE)
    site = _enabled(context, session.org)
    picked = text_field(form, "subject") or ""
    named = (text_field(form, "subject_name") or "").strip()
    description = text_field(form, "description") or ""
    draft = {"subject": picked, "subject_name": named, "description": description}
    try:
        if picked:
            kind, _, ident = picked.partition(":")
            ref = site.subjects.get((kind, ident))
            if ref is None:
                raise ApiError(422, "invalid_value", f"subject: no subject {picked!r}", "subject")
            subject = Subject(SubjectType(ref.type), ref.id, ref.name)
        elif named:
            if len(named) > MAX_NAME:
                raise ApiError(
                    422, "invalid_value", f"subject_name: at most {MAX_NAME} characters", "subject"
                )
            subject = _described(named)
        else:
            raise ApiError(422, "missing_field", "pick a subject, or name what is wrong", "subject")
        if not description.strip():
            raise ApiError(422, "missing_field", "description is required", "description")
        change = await context.api.store.open(
            OpenRequest(
                org=session.org,
                source=Source.USER,
                subject=subject,
                kind=Kind.USER_REPORT.value,
                description=description,
                actor=actor(session),
            )
        )
    except ApiError as exc:
        return render.page(
            request,
            "report.html",
            session,
            {"org": site, "find": "", "matches": [], "draft": draft, "error": exc.message},
            status=exc.status,
        )
    outcome = "created" if change.outcome is OpenOutcome.CREATED else "commented"
    raise web.HTTPSeeOther(f"/orgs/{session.org}/tickets/{change.ticket.seq}?reported={outcome}")
