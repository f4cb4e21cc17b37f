"""Templates (Jinja2 through aiohttp-jinja2, autoescaped) and the filters they use: times
relative with the exact one beside, display names of states, kinds and events, markdown."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from tocsin.tickets.model import Kind, rfc3339
from tocsin.tickets.store import utcnow
from tocsin.web import markdown
from tocsin.web.context import WEB_CONTEXT
from tocsin.web.sessions import Session

EVENT_NAMES = {
    "opened": "Opened",
    "started": "Started",
    "resolved": "Resolved",
    "reopened": "Reopened",
    "comment": "Comment",
    "description_edited": "Description edited",
}
SOURCE_NAMES = {"health_monitor": "Health monitor", "user": "User", "workflow": "Workflow"}


def kind_name(kind: str) -> str:
    """A built-in kind's display name; a workflow's free-form kind as it was given."""
    return Kind(kind).display if kind in Kind.__members__.values() else kind


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """ "3 min ago", "2 h ago", "5 d ago": short enough for a phone's column."""
    if moment is None:
        return ""
    seconds = int(((now or utcnow()) - moment).total_seconds())
    if seconds < 45:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "1 min ago"


def exact(moment: datetime | None) -> str:
    return rfc3339(moment) if moment is not None else ""


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("tocsin.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        kind_name=kind_name,
        ago=ago,
        exact=exact,
        markdown=markdown.render,
        event_name=lambda t: EVENT_NAMES.get(t, t),
        source_name=lambda s: SOURCE_NAMES.get(s, s),
    )
    static = app.router

    def asset(name: str) -> str:
        """A static file's URL with its content's hash (cached, yet never stale)."""
        return str(static["static"].url_for(filename=name))

    env.globals["asset"] = asset


def page(
    request: web.Request,
    template: str,
    session: Session | None,
    values: dict[str, Any],
    *,
    status: int = 200,
) -> web.Response:
    report_link = False
    if session is not None and session.scope == "write":
        org = request.app[WEB_CONTEXT].api.org(session.org)
        report_link = org is not None and org.report_issue
    context = {
        "session": session,
        "path": request.path,
        "report_link": report_link,
        "now": utcnow(),  # one moment for every "3 min ago" on the page
        # What a live update fetches again (a page shown after a failed post: its GET twin).
        "page_url": request.path_qs if request.method == "GET" else request.path,
        **values,
    }
    return aiohttp_jinja2.render_template(template, request, context, status=status)
