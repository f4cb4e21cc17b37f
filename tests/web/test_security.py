"""Who may do what, and what may not get in: a read-only person sees no actions and a forged
one is refused, every form post needs its CSRF token, write-only pages stay closed to readers,
and markup people and workflows type (descriptions, comments, subject names, free-form kinds)
is shown as the text it is, never an element, never run, also when it arrives live."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import ORG, Visitors, WebDaemon, open_live, ticket_path

IMG = '<img src=x onerror="window.__xss=1">'
SCRIPT = "<script>window.__xss=1</script>"
PAYLOADS = [pytest.param(IMG, id="img-onerror"), pytest.param(SCRIPT, id="script")]
LINK = "[click me](javascript:window.__xss=1)"
FORGE = """async ([url, fields]) => {
    const response = await fetch(url, {method: "POST", body: new URLSearchParams(fields)});
    return [response.status, await response.text()];
}"""


def post_from(page: Page, path: str, fields: dict[str, str]) -> tuple[int, str]:
    """A form post made by script in the page: the session's cookie goes with it."""
    status, text = page.evaluate(FORGE, [path, fields])
    return int(status), str(text)


def csrf_of(page: Page) -> str:
    """The session's own valid CSRF token, as the sign-out form carries it."""
    return page.locator('form[action="/logout"] input[name=csrf]').input_value()


def test_a_read_only_person_sees_no_actions_on_a_ticket(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("rui", ticket_path(seq))
    expect(page.locator('form[action="/logout"]')).to_contain_text("(read only)")
    expect(page.locator("#ticket-state")).to_have_text("Open")
    expect(page.locator("[data-action]")).to_have_count(0)
    expect(page.locator("main form")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link", name="Report issue")).to_have_count(0)
    expect(nav.get_by_role("link", name="Webhooks")).to_have_count(0)


def test_a_forged_start_from_a_read_only_session_is_refused(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("rui", ticket_path(seq))
    status, text = post_from(page, f"{ticket_path(seq)}/start", {"csrf": csrf_of(page)})
    assert status == 403
    assert "this needs write access; you have read" in text
    answer = page.request.post(f"{ticket_path(seq)}/start", form={"csrf": csrf_of(page)})
    assert answer.status == 403
    assert daemon.ticket(seq)["state"] == "open"
    assert [e["type"] for e in daemon.ticket(seq)["timeline"]] == ["opened"]


def test_a_form_post_without_its_csrf_token_is_refused(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("maria", ticket_path(seq))
    for fields in ({"body": "no token"}, {"body": "wrong token", "csrf": "not-the-token"}):
        status, text = post_from(page, f"{ticket_path(seq)}/comment", fields)
        assert status == 403
        assert "CSRF token is missing or stale" in text
    status, _ = post_from(page, f"{ticket_path(seq)}/start", {})
    assert status == 403
    status, _ = post_from(page, "/logout", {})
    assert status == 403
    assert [e["type"] for e in daemon.ticket(seq)["timeline"]] == ["opened"]
    # Still signed in; with its token the same post goes through.
    status, _ = post_from(
        page, f"{ticket_path(seq)}/comment", {"body": "ok", "csrf": csrf_of(page)}
    )
    assert status == 200
    assert [e["type"] for e in daemon.ticket(seq)["timeline"]] == ["opened", "comment"]


def test_the_webhooks_page_is_for_write_users_only(visitors: Visitors) -> None:
    writer = visitors.page("maria")
    writer.get_by_role("navigation", name="Pages").get_by_role("link", name="Webhooks").click()
    expect(writer).to_have_url(re.compile(rf"/orgs/{ORG}/webhooks$"))
    expect(writer.get_by_role("heading", level=1)).to_have_text("Webhooks")
    reader = visitors.page("rui")
    answer = reader.goto(f"/orgs/{ORG}/webhooks")
    assert answer is not None
    assert answer.status == 403
    expect(reader.locator(".flash-error[role=alert]")).to_contain_text("you have read")


def test_the_report_page_is_for_write_users_only(visitors: Visitors) -> None:
    reader = visitors.page("rui")
    answer = reader.goto(f"/orgs/{ORG}/report")
    assert answer is not None
    assert answer.status == 403


def test_another_orgs_pages_are_not_found(visitors: Visitors) -> None:
    page = visitors.page("maria")
    answer = page.goto("/orgs/globex/tickets")
    assert answer is not None
    assert answer.status == 404


def test_pages_forbid_inline_script_framing_and_other_origins(visitors: Visitors) -> None:
    page = visitors.page("maria")
    answer = page.goto(f"/orgs/{ORG}/tickets")
    assert answer is not None
    headers = answer.headers
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    session = next(c for c in page.context.cookies() if c["name"] == "tocsin_session")
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"


# Markup typed by people and workflows.


def assert_inert(page: Page) -> None:
    """Nothing typed became an element or ran: no flag set, no <img>, no handler, no script but
    the pages' own file, no javascript: link."""
    assert page.evaluate("typeof window.__xss") == "undefined"
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("[onerror]")).to_have_count(0)
    expect(page.locator("a[href^='javascript:' i]")).to_have_count(0)
    scripts = page.locator("script").evaluate_all(
        "nodes => nodes.map(n => [n.getAttribute('src'), n.textContent])"
    )
    assert all(src and "/static/tocsin" in src and not text for src, text in scripts), scripts


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markup_in_a_description_subject_name_and_kind_shows_as_text(
    visitors: Visitors, daemon: WebDaemon, payload: str
) -> None:
    tag = f"x{uuid.uuid4().hex[:10]}"
    seq = daemon.open_ticket(kind=payload, name=payload, description=f"{payload}\n\n{tag}")
    page = visitors.page("maria", ticket_path(seq))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"#{seq} {payload}: {payload}")
    expect(page.locator("#description p").first).to_have_text(payload)
    expect(page.locator("dl.facts")).to_contain_text(payload)
    assert payload in page.title()
    assert_inert(page)

    page.goto(f"/orgs/{ORG}/tickets?q={tag}")
    row = page.locator(f"table.tickets tbody tr[data-seq='{seq}']")
    expect(row.locator("td[data-label=Kind]")).to_have_text(payload)
    expect(row.locator("td[data-label=Subject]")).to_contain_text(payload)
    assert_inert(page)


def test_markup_in_a_comment_shows_as_text(visitors: Visitors, daemon: WebDaemon) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("maria", ticket_path(seq))
    body = f"{IMG}\n\n{SCRIPT}\n\n{LINK}"
    page.locator("textarea[name=body]").fill(body)
    page.locator("button[data-action=comment]").click()
    comment = page.locator("#timeline li[data-event=comment] .markdown")
    expect(comment.locator("p")).to_have_count(3)
    expect(comment.locator("p").nth(0)).to_have_text(IMG)
    expect(comment.locator("p").nth(1)).to_have_text(SCRIPT)
    expect(comment).to_contain_text("click me")
    # A resolve's comment goes the same way.
    page.locator("form:has(button[data-action=resolve]) textarea[name=comment]").fill(IMG)
    page.locator("button[data-action=resolve]").click()
    expect(page.locator("#timeline li[data-event=resolved] .markdown")).to_have_text(IMG)
    assert_inert(page)


def test_markup_in_a_description_preview_shows_as_text(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("maria", ticket_path(seq))
    page.get_by_text("Edit description").click()
    page.locator("textarea[name=description]").fill(f"{IMG}\n\n{SCRIPT}")
    page.locator("button[name=preview]").click()
    expect(page.locator("#preview p").nth(0)).to_have_text(IMG)
    expect(page.locator("#preview p").nth(1)).to_have_text(SCRIPT)
    assert_inert(page)
    page.locator("button[data-action=edit]").click()
    expect(page.locator("#description p").nth(0)).to_have_text(IMG)
    assert_inert(page)


def test_markup_in_a_reported_subject_name_shows_as_text(visitors: Visitors) -> None:
    page = visitors.page("maria", f"/orgs/{ORG}/report?find=nothing-is-called-this")
    report = page.locator("form#report")
    report.locator("input[name=subject_name]").fill(IMG)
    report.locator("textarea[name=description]").fill(SCRIPT)
    report.locator("button#report-submit").click()
    expect(page.locator(".flash-ok")).to_contain_text("Your report opened")
    expect(page.get_by_role("heading", level=1)).to_contain_text(IMG)
    expect(page.locator("#description p")).to_have_text(SCRIPT)
    assert_inert(page)


def test_markup_that_arrives_live_stays_text(visitors: Visitors, daemon: WebDaemon) -> None:
    page = visitors.context("rui").new_page()
    open_live(page, f"/orgs/{ORG}/tickets")
    seq = daemon.open_ticket(kind=IMG, name=SCRIPT)
    row = page.locator(f"table.tickets tbody tr[data-seq='{seq}']")
    expect(row.locator("td[data-label=Kind]")).to_have_text(IMG)
    expect(row.locator("td[data-label=Subject]")).to_contain_text(SCRIPT)
    assert_inert(page)
