"""Report issue, the health board, webhook deliveries, the headers every page carries, and the
API keeping its JSON errors beside the pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import aiohttp

from tests.pages.conftest import Site, serving, site_config, state_row
from tocsin.config import parse
from tocsin.delivery import outbox
from tocsin.delivery.endpoints import endpoints_from
from tocsin.monitor.maintenance import HOLD_PREFIX
from tocsin.tickets.store import TicketStore
from tocsin.web.app import CSP
from tocsin.web.context import WEB_CONTEXT, SubjectRows


def flash(html: str) -> str:
    found = re.search(r'class="flash flash-ok" role="status">([^<]*)<', html)
    return unescape(found.group(1)) if found else ""


async def test_report_issue_opens_a_user_report_then_comments_on_it(site: Site) -> None:
    browser = await site.signed_in()
    found = await browser.get("/orgs/acme/report?find=lobby")
    assert 'value="device:cam-1"' in found.html
    assert 'value="space:lobby"' in found.html
    first = await browser.post(
        "/orgs/acme/report", {"subject": "device:cam-1", "description": "The lens is cracked."}
    )
    assert first.status == 200
    assert flash(first.html) == "Your report opened #1."
    assert "User report" in first.html
    assert first.events() == ["opened"]
    again = await browser.post(
        "/orgs/acme/report", {"subject": "device:cam-1", "description": "Still cracked."}
    )
    assert again.url.endswith("/orgs/acme/tickets/1?reported=commented")
    assert "added to it as a comment" in flash(again.html)
    assert again.events() == ["opened", "comment"]
    ticket, _ = await site.store.get("acme", 1)
    assert (ticket.source.value, ticket.kind) == ("user", "user_report")


async def test_report_issue_about_something_the_config_does_not_know(site: Site) -> None:
    browser = await site.signed_in()
    await browser.get("/orgs/acme/report?find=door")
    page = await browser.post(
        "/orgs/acme/report", {"subject_name": "Door 3 <b>", "description": "Stuck open."}
    )
    assert page.status == 200
    ticket, _ = await site.store.get("acme", 1)
    assert (ticket.subject.type.value, ticket.subject.id) == ("other", "reported-door-3-b")
    assert ticket.subject.name == "Door 3 <b>"


async def test_a_bad_report_names_the_problem_and_keeps_the_text(site: Site) -> None:
    browser = await site.signed_in()
    await browser.get("/orgs/acme/report")
    for data, named in (
        ({"description": "what?"}, "pick a subject, or name what is wrong"),
        ({"subject": "device:nope", "description": "x"}, "subject: no subject 'device:nope'"),
        ({"subject": "device:cam-1", "description": "  "}, "description is required"),
    ):
        page = await browser.post("/orgs/acme/report", data)
        assert page.status == 422
        assert page.alert() == named
        assert data["description"] in page.html
    assert await site.store.count("acme") == 0


async def test_report_issue_is_refused_where_the_org_has_not_enabled_it(
    db_url: str, store: TicketStore
) -> None:
    settings = parse(site_config(db_url, report_issue=False))
    async with serving(settings, store) as site:
        browser = await site.signed_in()
        assert "Report issue" not in (await browser.get("/orgs/acme/tickets")).html
        page = await browser.get("/orgs/acme/report")
        assert page.status == 403
        assert "not enabled" in page.alert()
        await browser.get("/orgs/acme/tickets")
        posted = await browser.post("/orgs/acme/report", {"subject": "device:cam-1"})
        assert posted.status == 403


async def test_the_health_board_groups_subjects_by_space_with_counts(site: Site) -> None:
    seq = await site.open(key="k")
    await site.save_states(
        [
            state_row("device", "cam-1", "Lobby camera", "down", ticket_seq=seq, detail="HTTP 503"),
            state_row("device", "cam-2", "Dock camera", "up", detail="HTTP 200"),
            state_row("space", "lobby", "Main lobby", "up"),
            state_row("space", "dock", "dock", "up"),
        ]
    )
    browser = await site.signed_in("viewer")
    page = await browser.get("/orgs/acme/subjects")
    counts = dict(re.findall(r'data-health-count="(\w+)"[^>]*><span class="n">(\d+)', page.html))
    assert counts["down"] == "1"
    assert counts["up"] == "1"  # the two devices: a space's row is its heading
    assert counts["unknown"] == "0"
    sections = re.findall(r'<section data-space="(\w*)"', page.html)
    assert sections == ["lobby", "dock"]
    row = re.search(r'<tr id="device:cam-1".*?</tr>', page.html, re.S)
    assert row is not None
    assert 'data-health="down"' in row.group(0)
    assert "HTTP 503" in row.group(0)
    assert f'href="/orgs/acme/tickets/{seq}"' in row.group(0)
    only_down = await browser.get("/orgs/acme/subjects?health=down")
    assert re.findall(r'data-subject="([^"]+)"', only_down.html) == ["device:cam-1"]
    bad = await browser.get("/orgs/acme/subjects?health=grumpy")
    assert bad.status == 422
    assert "health: 'grumpy' is not one of" in bad.alert()


async def test_the_health_board_says_who_is_covered_by_a_group_or_in_maintenance(
    site: Site,
) -> None:
    group = await site.open(subject=("space", "lobby", "Main lobby"), key="g")
    held = state_row("device", "cam-1", "Lobby camera", "unreachable", held_by="lobby")
    away = state_row("device", "cam-2", "Dock camera", "failing", held_by=HOLD_PREFIX + "w1")
    await site.save_states([state_row("space", "lobby", "Main lobby", "down", ticket_seq=group)])
    await site.save_states([held, away])
    browser = await site.signed_in()
    page = await browser.get("/orgs/acme/subjects")
    covered = re.search(r'<tr id="device:cam-1"[^>]*data-health="(\w+)"', page.html)
    maintained = re.search(r'<tr id="device:cam-2"[^>]*data-health="(\w+)"', page.html)
    assert covered
    assert covered.group(1) == "covered"
    assert f"group #{group}" in page.html
    heading = re.search(r'<section data-space="lobby".*?</h2>', page.html, re.S)
    assert heading is not None
    assert f"Multiple devices offline #{group}" in heading.group(0)
    assert maintained
    assert maintained.group(1) == "maintenance"


def hooks_config(db_url: str, url: str) -> str:
    return site_config(
        db_url,
        extra=f'[[webhooks]]\nname = "ops-chat"\nurl = "{url}"\n'
        'secret_env = "HOOK_SECRET"\norgs = ["acme"]\n',
    )


async def test_write_users_see_deliveries_and_redeliver_one(
    db_url: str, store: TicketStore, tmp_path: Path
) -> None:
    env = {"HOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    settings = parse(hooks_config(db_url, "http://127.0.0.1:9/hook"), env=env)
    async with serving(settings, store) as site:
        seq = await site.open()
        now = datetime.now(UTC)
        await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops-chat"], now))
        await store.writer.run(lambda c: outbox.fan_out(c, endpoints_from(settings), now))
        browser = await site.signed_in()
        page = await browser.get("/orgs/acme/webhooks")
        assert page.status == 200
        assert 'data-endpoint="ops-chat"' in page.html
        delivery = re.search(r'<tr data-delivery="(\d+)" data-status="pending"', page.html)
        assert delivery is not None
        assert f'href="/orgs/acme/tickets/{seq}"' in page.html
        path = f"/orgs/acme/webhooks/deliveries/{delivery.group(1)}/redeliver"
        again = await browser.post(path, {})
        assert again.status == 200
        assert "queued to be sent again" in flash(again.html)
        missing = await browser.post("/orgs/acme/webhooks/deliveries/999/redeliver", {})
        assert missing.status == 404
        assert "999" in missing.alert()
        reader = await site.signed_in("viewer")
        assert (await reader.get("/orgs/acme/webhooks")).status == 403
        assert 'href="/orgs/acme/webhooks"' not in (await reader.get("/orgs/acme/tickets")).html


async def test_every_page_carries_a_strict_policy_and_the_api_keeps_json_errors(
    site: Site,
) -> None:
    browser = await site.signed_in()
    for path in ("/login", "/orgs/acme/tickets", "/orgs/acme/subjects", "/orgs/acme/nope"):
        page = await browser.get(path)
        assert page.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP
        assert "script-src 'self'" in CSP
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Cache-Control"] == "no-store"
        assert "<script>" not in page.html
        assert " style=" not in page.html
    async with browser.session.get(site.base + "/api/v1/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with browser.session.get(site.base + "/api/v1/orgs/acme/tickets") as response:
        assert response.status == 401  # a session cookie is no API token


async def test_static_files_are_served_by_the_daemon_with_a_content_version(site: Site) -> None:
    browser = await site.signed_in()
    page = await browser.get("/orgs/acme/tickets")
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.html)
    assert len(assets) == 2
    assert all("?v=" in a for a in assets)
    async with aiohttp.ClientSession() as anonymous:
        for asset in assets:
            async with anonymous.get(site.base + unescape(asset)) as response:
                assert response.status == 200
                assert "max-age" in response.headers["Cache-Control"]
    external = re.findall(r'(?:href|src)="(https?:|//)', page.html)
    assert external == []


async def test_the_board_reads_the_subjects_again_once_its_copy_is_a_few_seconds_old(
    site: Site,
) -> None:
    app = site.server.app
    assert app is not None
    moment = [0.0]
    app[WEB_CONTEXT].subjects = SubjectRows(ttl=3.0, monotonic=lambda: moment[0])
    await site.save_states([state_row("device", "cam-1", "Lobby camera", "up")])
    browser = await site.signed_in()
    health = re.compile(r'<tr id="device:cam-1"[^>]*data-health="(\w+)"')

    async def shown() -> str:
        found = health.search((await browser.get("/orgs/acme/subjects")).html)
        assert found is not None
        return found.group(1)

    assert await shown() == "up"
    await site.save_states([state_row("device", "cam-1", "Lobby camera", "down")])
    moment[0] = 2.0
    assert await shown() == "up"  # every viewer shares one copy for a few seconds
    moment[0] = 3.5
    assert await shown() == "down"
