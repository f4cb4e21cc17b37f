"""The live stream: an event when tickets change (coalesced in a storm), one when the monitor's
health view changes, comments while idle, and every stream ended when the daemon stops."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.pages.conftest import Browser, Site
from tocsin.tickets.model import Actor, ActorType, Source, Subject, SubjectType
from tocsin.tickets.writes import OpenRequest
from tocsin.web.context import WEB_CONTEXT
from tocsin.web.live import Live


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[str]:
    """The next `count` event names (or "idle" for a keepalive comment)."""
    found: list[str] = []
    while len(found) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        if line.startswith("event: "):
            found.append(line.removeprefix("event: ").strip())
        elif line.startswith(": idle"):
            found.append("idle")
    return found


def use(site: Site, live: Live) -> None:
    app = site.server.app
    assert app is not None
    context = app[WEB_CONTEXT]
    context.live = live
    site.store.on_change(live.tickets_changed)


async def stream(browser: Browser, kinds: str) -> aiohttp.ClientResponse:
    response = await browser.session.get(f"{browser.base}/orgs/acme/live?kinds={kinds}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert (await response.content.readline()).startswith(b"retry:")
    return response


async def test_a_ticket_change_reaches_every_stream_once_however_many_there_were(
    site: Site,
) -> None:
    use(site, Live(every=0.05, keepalive=30))
    browsers = [await site.signed_in(), await site.signed_in("viewer")]
    streams = [await stream(b, "tickets") for b in browsers]
    for n in range(20):  # a storm: one event, not twenty
        await site.open(key=f"k{n}")
    for response in streams:
        assert await read_events(response, 1) == ["tickets"]
    await site.open(key="later")
    for response in streams:
        assert await read_events(response, 1) == ["tickets"]
        response.close()


async def test_a_description_edit_fires_no_trigger_but_updates_open_pages(site: Site) -> None:
    live = Live(every=0.05, keepalive=30)
    use(site, live)
    seq = await site.open()
    browser = await site.signed_in()
    response = await stream(browser, "tickets")
    await browser.get(f"/orgs/acme/tickets/{seq}")
    await browser.post(f"/orgs/acme/tickets/{seq}/edit", {"description": "new"})
    assert await read_events(response, 1) == ["tickets"]
    # An edit through the API, or the monitor's, reaches open pages too.
    await site.store.edit_description("acme", seq, Actor(ActorType.USER, "api"), "newer")
    assert await read_events(response, 1) == ["tickets"]
    response.close()


async def test_the_health_view_changing_reaches_streams_that_asked_for_it(site: Site) -> None:
    marker = [0.0]
    use(site, Live(lambda: marker[0], every=0.05, keepalive=0.2, poll=0.02))
    browser = await site.signed_in()
    board = await stream(browser, "subjects")
    assert await read_events(board, 1) == ["idle"]  # nothing changed: a comment, no event
    marker[0] = 1.0
    assert await read_events(board, 1) == ["subjects"]
    board.close()


async def test_stopping_ends_every_stream(site: Site) -> None:
    live = Live(every=0.05, keepalive=30)
    use(site, live)
    browser = await site.signed_in()
    response = await stream(browser, "tickets")
    assert live.listeners == 1
    await live.close()
    rest = await asyncio.wait_for(response.content.read(), 5)  # to the end: it ended
    assert rest.strip() == b""
    response.close()


async def test_a_stream_ends_when_its_session_does(site: Site) -> None:
    use(site, Live(every=0.05, keepalive=0.1))
    browser = await site.signed_in()
    response = await stream(browser, "tickets")
    assert await read_events(response, 1) == ["idle"]
    await browser.get("/orgs/acme/tickets")
    await browser.post("/logout", {})
    rest = await asyncio.wait_for(response.content.read(), 5)  # to the end: it ended
    assert b"event:" not in rest
    response.close()


async def test_a_stream_needs_a_session(site: Site) -> None:
    browser = await site.browser()
    async with browser.session.get(
        f"{site.base}/orgs/acme/live", allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("/login?next=")


async def test_another_org_s_tickets_never_reach_a_stream(site: Site) -> None:
    use(site, Live(every=0.05, keepalive=0.3))
    browser = await site.signed_in()
    response = await stream(browser, "tickets")
    await site.store.open(
        OpenRequest(
            org="beta",
            source=Source.WORKFLOW,
            subject=Subject(SubjectType.DEVICE, "b-1", "Beta device"),
            kind="device_offline",
            description="",
            actor=Actor(ActorType.WORKFLOW, "beta-ops"),
            dedup_key="beta-1",
        )
    )
    assert await read_events(response, 1) == ["idle"]  # beta's write: nothing for acme
    await site.open(key="acme-1")
    assert await read_events(response, 1) == ["tickets"]
    response.close()
