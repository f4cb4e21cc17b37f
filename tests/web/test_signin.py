"""Signing in (with a token, with a name and password), signing out, sessions across a daemon
restart, and the sign-in form's defences."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.web.conftest import (
    ORG,
    TOKENS,
    USERS,
    Visitors,
    WebDaemon,
    ticket_path,
)

TICKETS = re.compile(rf"/orgs/{ORG}/tickets$")
LOGIN = re.compile(r"/login(\?.*)?$")


@pytest.fixture(scope="module")
def login_delay() -> str:
    """This module's daemon makes a failed sign-in wait 1 s (only one test fails one)."""
    return "1s"


def test_a_token_signs_in_and_lands_on_the_tickets_list(visitors: Visitors) -> None:
    page = visitors.page(at="/login")
    form = page.locator("form#login-token")
    expect(form.locator("input[type=hidden][name=csrf]")).to_have_count(1)
    form.locator("input[name=token]").fill(TOKENS["ops"][1])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        form.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 303
    assert answer.value.headers["location"] == f"/orgs/{ORG}/tickets"
    expect(page).to_have_url(TICKETS)
    expect(page.locator('form[action="/logout"]')).to_contain_text("ops")
    expect(page.locator('form[action="/logout"]').get_by_role("button")).to_have_text("Sign out")


def test_a_user_signs_in_with_name_and_password(visitors: Visitors) -> None:
    page = visitors.page(at="/login")
    form = page.locator("form#login-user")
    expect(form.locator("input[type=hidden][name=csrf]")).to_have_count(1)
    form.locator("input[name=username]").fill("maria")
    form.locator("input[name=password]").fill(USERS["maria"][1])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        form.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 303
    expect(page).to_have_url(TICKETS)
    expect(page.locator('form[action="/logout"]')).to_contain_text("maria")


def test_a_sign_in_post_without_its_csrf_token_is_refused(visitors: Visitors) -> None:
    page = visitors.page(at="/login")  # sets the form's CSRF cookie; the post leaves it out
    answer = page.request.post("/login", form={"token": TOKENS["ops"][1]}, max_redirects=0)
    assert answer.status == 403
    assert "CSRF" in answer.text()
    page.goto(f"/orgs/{ORG}/tickets")
    expect(page).to_have_url(LOGIN)


def test_a_signed_out_visitor_is_sent_to_sign_in_and_then_back(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page(at=ticket_path(seq))
    expect(page).to_have_url(LOGIN)
    form = page.locator("form#login-user")
    form.locator("input[name=username]").fill("maria")
    form.locator("input[name=password]").fill(USERS["maria"][1])
    form.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(rf"{ticket_path(seq)}$"))
    expect(page.locator("#ticket-state")).to_have_text("Open")


def test_a_sign_in_never_sends_you_to_another_site(visitors: Visitors, daemon: WebDaemon) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        page = visitors.page(at=f"/login?next={quote(target, safe='')}")
        form = page.locator("form#login-user")
        form.locator("input[name=username]").fill("maria")
        form.locator("input[name=password]").fill(USERS["maria"][1])
        form.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{daemon.base}/orgs/{ORG}/tickets")


def test_signing_out_ends_the_session_for_its_cookie_too(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    page = visitors.page("maria", fresh=True)
    cookie = next(c for c in page.context.cookies() if c["name"] == "tocsin_session")
    page.locator('form[action="/logout"]').get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(LOGIN)
    page.goto(f"/orgs/{ORG}/tickets")
    expect(page).to_have_url(LOGIN)
    # The old cookie, presented again, is no session: the server forgot it, not just the browser.
    replay = visitors.page()
    replay.context.add_cookies(
        [{"name": cookie["name"], "value": cookie["value"], "url": daemon.base}]
    )
    replay.goto(f"/orgs/{ORG}/tickets")
    expect(replay).to_have_url(LOGIN)


def test_a_session_survives_a_daemon_restart(visitors: Visitors, daemon: WebDaemon) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("maria", ticket_path(seq))
    daemon.restart()
    page.reload()
    expect(page.locator('form[action="/logout"]')).to_contain_text("maria")
    # Its CSRF token is the stored one: a form still posts.
    page.locator("textarea[name=body]").fill("Still signed in after the restart.")
    page.locator("button[data-action=comment]").click()
    expect(page.locator("#timeline li[data-event=comment]")).to_contain_text("after the restart")


def test_a_failed_sign_in_is_slowed_and_its_secret_never_logged(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    page = visitors.page(at="/login")
    attempts = [
        ("form#login-user", {"username": "maria", "password": "Guess-Number-One"}),
        ("form#login-token", {"token": "Guessed-Token-Two"}),
    ]
    for form_id, fields in attempts:
        form = page.locator(form_id)
        for name, value in fields.items():
            form.locator(f"input[name={name}]").fill(value)
        began = time.monotonic()
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            form.get_by_role("button", name="Sign in").click()
        assert time.monotonic() - began >= 1.0  # the module's login_delay
        assert answer.value.status == 401
        expect(page.locator(".flash-error[role=alert]")).to_contain_text("did not sign you in")
        expect(page.locator('form[action="/logout"]')).to_have_count(0)
    expect(page.locator("form#login-user input[name=username]")).to_have_value("")
    # The right password is not slowed.
    form = page.locator("form#login-user")
    form.locator("input[name=username]").fill("maria")
    form.locator("input[name=password]").fill(USERS["maria"][1])
    began = time.monotonic()
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        form.get_by_role("button", name="Sign in").click()
    assert time.monotonic() - began < 1.0
    assert answer.value.status == 303

    log = daemon.log.read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    failures = [e for e in entries if e.get("event") == "sign-in failed"]
    assert [(f.get("method"), f.get("username")) for f in failures] == [
        ("password", "maria"),
        ("token", None),
    ]
    assert all(f.get("client") == "127.0.0.1" for f in failures)
    for secret in ("Guess-Number-One", "Guessed-Token-Two", USERS["maria"][1]):
        assert secret not in log
