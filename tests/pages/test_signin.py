"""Signing in and out: tokens and users, the session cookie, its expiry and a restart, the
sign-in form's CSRF token, failed attempts slowed and logged without the secret."""

from __future__ import annotations

import time

import structlog.testing
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import FakeClock
from tests.pages.conftest import Site, serving, site_app, site_config, token_value
from tocsin.config import parse
from tocsin.tickets.store import TicketStore
from tocsin.web.context import WEB_CONTEXT
from tocsin.web.sessions import COOKIE


async def test_a_page_sends_a_visitor_who_is_not_signed_in_to_sign_in_and_back(
    site: Site,
) -> None:
    browser = await site.browser()
    page = await browser.get("/orgs/acme/tickets?state=open")
    url = URL(page.url)
    assert url.path == "/login"
    assert url.query["next"] == "/orgs/acme/tickets?state=open"
    assert 'id="login-token"' in page.html
    assert 'id="login-user"' in page.html
    signed = await browser.post(
        "/login", {"token": token_value("ops"), "next": "/orgs/acme/tickets?state=open"}
    )
    assert signed.status == 200
    assert signed.url.endswith("/orgs/acme/tickets?state=open")


async def test_a_token_signs_in_and_the_timeline_names_the_token(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in("ops")
    await browser.get(f"/orgs/acme/tickets/{seq}")
    page = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": "On my way."})
    assert page.status == 200
    assert 'class="actor">ops</span>' in page.html


async def test_a_user_signs_in_with_name_and_password_and_acts_under_their_name(
    site: Site,
) -> None:
    seq = await site.open()
    browser = await site.browser()
    page = await browser.sign_in(username="maria", password="maria-password")
    assert page.status == 200
    assert page.url.endswith("/orgs/acme/tickets")
    assert "maria" in page.html
    await browser.get(f"/orgs/acme/tickets/{seq}")
    done = await browser.post(f"/orgs/acme/tickets/{seq}/start", {})
    assert done.events() == ["opened", "started"]
    assert 'class="actor">maria</span>' in done.html


async def test_wrong_credentials_are_refused_and_logged_without_the_secret(site: Site) -> None:
    browser = await site.browser()
    with structlog.testing.capture_logs() as logs:
        wrong_password = await browser.sign_in(username="maria", password="hunter2-guess")
        wrong_token = await browser.sign_in(token="not-a-token-at-all")
        unknown_user = await browser.sign_in(username="nobody", password="whatever-pw")
    for page in (wrong_password, wrong_token, unknown_user):
        assert page.status == 401
        assert "did not sign you in" in page.alert()
        assert browser.cookie(COOKIE) is None
    failures = [entry for entry in logs if entry["event"] == "sign-in failed"]
    assert len(failures) == 3
    assert failures[0]["username"] == "maria"
    text = repr(logs)
    for secret in ("hunter2-guess", "not-a-token-at-all", "whatever-pw"):
        assert secret not in text


async def test_a_failed_sign_in_waits_the_login_delay_before_it_answers(
    db_url: str, store: TicketStore
) -> None:
    settings = parse(site_config(db_url).replace('login_delay = "0s"', 'login_delay = "1s"'))
    async with serving(settings, store) as site:
        browser = await site.browser()
        await browser.get("/login")
        started = time.monotonic()
        page = await browser.post("/login", {"token": "wrong"})
        assert page.status == 401
        assert time.monotonic() - started >= 1.0
        started = time.monotonic()
        page = await browser.post("/login", {"token": token_value("ops")})
        assert page.status == 200
        assert time.monotonic() - started < 1.0  # a right one is not held back


async def test_the_sign_in_form_without_its_csrf_token_is_refused(site: Site) -> None:
    browser = await site.browser()
    await browser.get("/login")
    page = await browser.post("/login", {"token": token_value("ops")}, csrf=False)
    assert page.status == 403
    assert "CSRF" in page.alert()
    assert browser.cookie(COOKIE) is None


async def test_the_session_cookie_is_httponly_and_strict_and_secure_only_over_https(
    db_url: str, store: TicketStore
) -> None:
    for public_url, secure in (("http://127.0.0.1", False), ("https://tocsin.example", True)):
        settings = parse(site_config(db_url, public_url=public_url))
        async with serving(settings, store) as site:
            browser = await site.browser()
            login = await browser.get("/login")
            async with browser.session.post(
                site.base + "/login",
                data={"csrf": login.csrf, "token": token_value("ops")},
                # A Secure cookie does not come back over plain http: send it as a browser
                # on https would.
                cookies={"tocsin_login": login.csrf},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                header = next(
                    h for h in response.headers.getall("Set-Cookie") if h.startswith(COOKIE)
                )
            assert "HttpOnly" in header
            assert "SameSite=Strict" in header
            assert ("Secure" in header) is secure
            assert token_value("ops") not in header


async def test_a_session_survives_a_restart_of_the_daemon(site: Site, store: TicketStore) -> None:
    browser = await site.signed_in("ops")
    await site.server.close()
    again = TestServer(site_app(site.settings, store), host="127.0.0.1")
    await again.start_server()
    try:
        browser.base = str(again.make_url("")).rstrip("/")
        page = await browser.get("/orgs/acme/tickets")
        assert page.status == 200
        assert page.url.endswith("/orgs/acme/tickets")
    finally:
        await again.close()


async def test_a_session_ends_after_its_lifetime(site: Site, clock: FakeClock) -> None:
    browser = await site.signed_in("ops")
    clock.advance(hours=1, minutes=59)
    assert (await browser.get("/orgs/acme/tickets")).url.endswith("/orgs/acme/tickets")
    clock.advance(minutes=2)
    page = await browser.get("/orgs/acme/tickets")
    assert "/login?next=" in page.url


async def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(site: Site) -> None:
    browser = await site.signed_in("ops")
    stolen = await site.browser()
    cookie = browser.cookie(COOKIE)
    assert cookie is not None
    stolen.session.cookie_jar.update_cookies({COOKIE: cookie})
    assert (await stolen.get("/orgs/acme/tickets")).url.endswith("/orgs/acme/tickets")
    await browser.get("/orgs/acme/tickets")
    out = await browser.post("/logout", {})
    assert out.url.endswith("/login")
    assert "/login?next=" in (await stolen.get("/orgs/acme/tickets")).url


async def test_a_reload_that_removes_a_user_signs_them_out_and_a_new_role_applies_at_once(
    site: Site, db_url: str
) -> None:
    seq = await site.open()
    maria = await site.browser()
    await maria.sign_in(username="maria", password="maria-password")
    rui = await site.browser()
    await rui.sign_in(username="rui", password="rui-password")
    assert "start" in (await maria.get(f"/orgs/acme/tickets/{seq}")).actions()
    demoted = {"maria": ("read", "maria-password")}
    app = site.server.app
    assert app is not None
    app[WEB_CONTEXT].reload(parse(site_config(db_url, users=demoted)))
    assert (await maria.get(f"/orgs/acme/tickets/{seq}")).actions() == []
    assert "/login?next=" in (await rui.get("/orgs/acme/tickets")).url


async def test_next_never_leads_off_the_site(site: Site) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"):
        browser = await site.browser()
        await browser.get("/login")
        page = await browser.post("/login", {"token": token_value("ops"), "next": target})
        assert page.url == site.base + "/orgs/acme/tickets", target


async def test_a_session_sees_only_its_own_org(site: Site) -> None:
    browser = await site.signed_in("ops")
    page = await browser.get("/orgs/beta/tickets")
    assert page.status == 404
    assert "no org 'beta'" in page.alert()
