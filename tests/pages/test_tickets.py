"""The Tickets list and ticket detail: tabs with counts, filters, search, pages; actions shown
only where legal and allowed; the API's rules and messages; markup in any field stays text."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from html import unescape

from tests.pages.conftest import Site, serving, site_config, state_row
from tocsin.config import parse
from tocsin.tickets.model import Actor, ActorType, Source
from tocsin.tickets.store import TicketStore
from tocsin.tickets.transitions import Action
from tocsin.web.context import WEB_CONTEXT, Counts


def tab_counts(html: str) -> dict[str, int]:
    found = re.findall(r'data-tab="(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html)
    return {tab: int(count) for tab, count in found}


async def test_the_list_shows_tabs_with_counts_and_newest_first(site: Site) -> None:
    first = await site.open(key="a")
    second = await site.open(key="b", subject=("device", "cam-2", "Dock camera"))
    third = await site.open(key="c", kind="integration_unreachable", source=Source.WORKFLOW)
    await site.store.transition("acme", second, Action.START, Actor(ActorType.USER, "x"))
    await site.store.transition("acme", first, Action.RESOLVE, Actor(ActorType.USER, "x"))
    browser = await site.signed_in()
    page = await browser.get("/orgs/acme/tickets")
    assert page.seqs() == [third, second, first]
    assert tab_counts(page.html) == {"open": 1, "in_progress": 1, "resolved": 1, "all": 3}
    assert 'data-tab="all" aria-current="page"' in page.html
    opened = await browser.get("/orgs/acme/tickets?state=open")
    assert opened.seqs() == [third]
    assert 'data-tab="open" aria-current="page"' in opened.html
    row = re.search(rf'<tr data-seq="{second}".*?</tr>', page.html, re.S)
    assert row is not None
    cells = unescape(re.sub(r"<[^>]+>", " ", row.group(0)))
    for shown in ("#2", "In Progress", "Device offline", "Dock camera", "Workflow", "Started"):
        assert shown in cells, shown
    assert "Main lobby" in page.html  # cam-1's space, by its name


async def test_filters_and_search_narrow_the_list_and_its_counts(site: Site) -> None:
    lobby = await site.open(key="a", description="smoke in the lobby")
    dock = await site.open(key="b", subject=("device", "cam-2", "Dock camera"))
    other = await site.open(
        key="c", kind="integration_unreachable", subject=("integration", "bms", "BMS")
    )
    browser = await site.signed_in()
    assert (await browser.get("/orgs/acme/tickets?space=lobby")).seqs() == [lobby]
    assert (await browser.get("/orgs/acme/tickets?space=dock")).seqs() == [dock]
    by_kind = await browser.get("/orgs/acme/tickets?kind=integration_unreachable")
    assert by_kind.seqs() == [other]
    assert tab_counts(by_kind.html)["all"] == 1
    assert (await browser.get("/orgs/acme/tickets?q=SMOKE")).seqs() == [lobby]
    assert (await browser.get("/orgs/acme/tickets?source=user")).seqs() == []
    typed = await browser.get("/orgs/acme/tickets?subject_type=device&state=open")
    assert typed.seqs() == [dock, lobby]


async def test_the_list_pages_with_a_cursor(site: Site) -> None:
    for n in range(55):
        await site.open(key=f"k{n}")
    browser = await site.signed_in()
    first = await browser.get("/orgs/acme/tickets?state=open")
    assert first.seqs() == list(range(55, 5, -1))
    older = re.search(r'href="([^"]+)" rel="next"', first.html)
    assert older is not None
    second = await browser.get(unescape(older.group(1)))
    assert second.seqs() == [5, 4, 3, 2, 1]
    assert 'rel="next"' not in second.html


async def test_a_bad_filter_gets_a_page_that_names_it(site: Site) -> None:
    browser = await site.signed_in()
    for query, status, named in (
        ("state=closed", 422, "state: 'closed' is not one of"),
        ("space=nowhere", 422, "space: no space 'nowhere'"),
        ("colour=red", 400, "unknown query parameter 'colour'"),
        ("cursor=%00garbage", 422, "cursor"),
    ):
        page = await browser.get(f"/orgs/acme/tickets?{query}")
        assert page.status == status, query
        assert named in page.alert(), (query, page.alert())
    missing = await browser.get("/orgs/acme/tickets/9999")
    assert missing.status == 404
    assert "no ticket #9999" in missing.alert()
    assert (await browser.get("/orgs/acme/tickets/x1")).status == 400


async def test_actions_show_only_where_the_state_allows_them(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    path = f"/orgs/acme/tickets/{seq}"
    assert (await browser.get(path)).actions() == ["start", "resolve", "comment", "edit"]
    await browser.post(path + "/start", {})
    assert (await browser.get(path)).actions() == ["resolve", "comment", "edit"]
    resolved = await browser.post(path + "/resolve", {"comment": "Power cycled it."})
    assert resolved.actions() == ["reopen", "comment", "edit"]
    assert resolved.events() == ["opened", "started", "resolved"]
    assert "Power cycled it." in resolved.html
    reopened = await browser.post(path + "/reopen", {"comment": ""})
    assert reopened.events()[-1] == "reopened"
    assert 'id="ticket-state" class="state state-open">Open<' in reopened.html


async def test_a_workflow_token_may_comment_and_resolve_but_not_start(site: Site) -> None:
    seq = await site.open()
    robot = await site.signed_in("robot")
    page = await robot.get(f"/orgs/acme/tickets/{seq}")
    assert page.actions() == ["resolve", "comment"]
    refused = await robot.post(f"/orgs/acme/tickets/{seq}/start", {})
    assert refused.status == 403


async def test_a_read_only_visitor_sees_no_buttons_and_a_forged_post_is_refused(
    site: Site,
) -> None:
    seq = await site.open()
    for reader in (await site.signed_in("viewer"), await site.browser()):
        if reader.cookie("tocsin_session") is None:
            await reader.sign_in(username="rui", password="rui-password")
        page = await reader.get(f"/orgs/acme/tickets/{seq}")
        assert page.status == 200
        assert page.actions() == []
        assert 'action="/orgs/acme/tickets' not in page.html
        for action in ("start", "resolve", "comment", "edit"):
            forged = await reader.post(
                f"/orgs/acme/tickets/{seq}/{action}", {"body": "x", "description": "x"}
            )
            assert forged.status == 403, action
        assert (await reader.get("/orgs/acme/report")).status == 403
        assert (await reader.get("/orgs/acme/webhooks")).status == 403
    ticket, timeline = await site.store.get("acme", seq)
    assert ticket.state.value == "open"
    assert len(timeline) == 1


async def test_a_form_without_its_csrf_token_is_refused_and_nothing_changes(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    page = await browser.post(f"/orgs/acme/tickets/{seq}/start", {}, csrf=False)
    assert page.status == 403
    assert "CSRF" in page.alert()
    wrong = await browser.post(f"/orgs/acme/tickets/{seq}/start", {"csrf": "guess"}, csrf=False)
    assert wrong.status == 403
    other = await site.signed_in("ops")  # another session's token is no good either
    stolen = await browser.post(f"/orgs/acme/tickets/{seq}/start", {"csrf": other.csrf}, csrf=False)
    assert stolen.status == 403
    ticket, _ = await site.store.get("acme", seq)
    assert ticket.state.value == "open"


async def test_a_lost_race_shows_the_apis_message_on_the_ticket_not_an_error_page(
    site: Site,
) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    await site.store.resolve("acme", seq, Actor(ActorType.USER, "someone else"))
    page = await browser.post(f"/orgs/acme/tickets/{seq}/start", {})
    assert page.status == 409
    assert page.alert() == "cannot start a ticket that is resolved (only when open)"
    assert page.events() == ["opened", "resolved"]
    assert page.actions() == ["reopen", "comment", "edit"]  # what can be done now


async def test_a_comment_the_store_refuses_keeps_what_was_typed(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    empty = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": "   "})
    assert empty.status == 422
    assert empty.alert() == "body: must not be empty"
    long = "x" * 20_001
    too_long = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": long})
    assert too_long.status == 422
    assert "at most 20000 characters" in too_long.alert()
    assert long in too_long.html


async def test_editing_the_description_previews_first_and_then_saves(site: Site) -> None:
    seq = await site.open(description="old text")
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    preview = await browser.post(
        f"/orgs/acme/tickets/{seq}/edit", {"description": "# Fixed\n\n*soon*", "preview": "1"}
    )
    assert preview.status == 200
    assert '<div class="markdown" id="preview"><h1>Fixed</h1>' in preview.html
    ticket, timeline = await site.store.get("acme", seq)
    assert ticket.description == "old text"
    assert len(timeline) == 1
    saved = await browser.post(f"/orgs/acme/tickets/{seq}/edit", {"description": "# Fixed"})
    assert saved.events() == ["opened", "description_edited"]
    assert "<h1>Fixed</h1>" in saved.html


XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


async def test_markup_in_a_description_comment_subject_or_kind_stays_text(site: Site) -> None:
    seq = await site.open(
        subject=("other", "thing-1", "Door " + XSS), kind="odd " + XSS[:40], description=XSS
    )
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    page = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": "see " + XSS})
    listed = await browser.get("/orgs/acme/tickets")
    for html in (page.html, listed.html):
        assert "<script>alert" not in html
        assert "<img" not in html
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html or "&lt;img" in html
    # markdown is kept (links get rel="noopener"), raw HTML is not
    body = "[ok](https://e.example) [no](javascript:alert(3))"
    linked = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": body})
    assert 'href="https://e.example"' in linked.html
    assert "javascript:" not in linked.html.split('id="timeline"')[1].split("</ol>")[0].replace(
        "[no](javascript:alert(3))", ""
    )


async def test_a_group_ticket_lists_the_devices_it_covers_and_their_health(site: Site) -> None:
    seq = await site.open(
        subject=("space", "lobby", "Main lobby"), kind="multiple_devices_offline", key="g"
    )
    await site.save_states(
        [
            state_row("space", "lobby", "Main lobby", "down", ticket_seq=seq),
            state_row("device", "cam-1", "Lobby camera", "unreachable", held_by="lobby"),
            state_row("device", "cam-2", "Dock camera", "up"),
        ]
    )
    browser = await site.signed_in()
    page = await browser.get(f"/orgs/acme/tickets/{seq}")
    members = re.findall(r'<tr data-subject="([^"]+)">(.*?)</tr>', page.html, re.S)
    assert [ref for ref, _ in members] == ["device:cam-1"]  # cam-2 is in another space
    assert "unreachable" in members[0][1]
    assert f"group #{seq}" in members[0][1]


async def test_tab_counts_follow_a_write_at_once_and_another_process_s_within_seconds(
    site: Site,
) -> None:
    seq = await site.open(key="a")
    browser = await site.signed_in()
    assert tab_counts((await browser.get("/orgs/acme/tickets")).html)["open"] == 1
    await site.open(key="b")  # through this process's store: the counts are cleared
    assert tab_counts((await browser.get("/orgs/acme/tickets")).html)["open"] == 2
    app = site.server.app
    assert app is not None
    moment = [0.0]
    app[WEB_CONTEXT].counts = Counts(ttl=5.0, monotonic=lambda: moment[0])
    assert tab_counts((await browser.get("/orgs/acme/tickets")).html)["open"] == 2
    # Another process (the CLI) resolves #1: this one is not told, and counts it again later.
    path = site.store.database.sqlite_path
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as other, other:
        other.execute("UPDATE tickets SET state = 'resolved' WHERE seq = ?", (seq,))
    moment[0] = 4.0
    assert tab_counts((await browser.get("/orgs/acme/tickets")).html)["open"] == 2
    moment[0] = 5.5
    assert tab_counts((await browser.get("/orgs/acme/tickets")).html)["open"] == 1


async def test_the_space_filter_takes_in_the_spaces_inside_it(
    db_url: str, store: TicketStore
) -> None:
    extra = (
        '[[spaces]]\norg = "acme"\nid = "reception"\nname = "Reception"\nparent = "lobby"\n'
        '[[devices]]\norg = "acme"\nid = "desk-1"\nname = "Desk phone"\nspace = "reception"\n'
        'probe = { type = "http", url = "http://127.0.0.1:9/" }\n'
    )
    async with serving(parse(site_config(db_url, extra=extra)), store) as site:
        desk = await site.open(key="d", subject=("device", "desk-1", "Desk phone"))
        lobby = await site.open(key="l")
        await site.open(key="x", subject=("device", "cam-2", "Dock camera"))
        browser = await site.signed_in()
        assert (await browser.get("/orgs/acme/tickets?space=lobby")).seqs() == [lobby, desk]
        assert (await browser.get("/orgs/acme/tickets?space=reception")).seqs() == [desk]
