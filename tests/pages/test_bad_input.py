"""What a browser (or someone posing as one) may send that a page must answer with a clear
page, never a 500: odd CSRF values, a Location-breaking `next`, large forms, reports about
things named in any script, previews past the limit; and what must not leak."""

from __future__ import annotations

import hashlib
import io
import re

import structlog
from yarl import URL

from tests.pages.conftest import Site, site_config, token_value
from tocsin import logs
from tocsin.config import parse
from tocsin.web.context import WEB_CONTEXT


async def test_a_csrf_field_that_is_not_plain_ascii_is_refused_not_a_crash(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    for value in ("é", "\u0000", "x" * 5000):
        page = await browser.post(
            f"/orgs/acme/tickets/{seq}/comment", {"csrf": value, "body": "x"}, csrf=False
        )
        assert page.status == 403, value
    await browser.get("/login")
    login = await browser.post("/login", {"csrf": "é", "token": token_value("ops")}, csrf=False)
    assert login.status == 403


async def test_a_next_with_a_line_break_lands_on_the_tickets(site: Site) -> None:
    browser = await site.browser()
    await browser.get("/login")
    page = await browser.post(
        "/login", {"token": token_value("ops"), "next": "/orgs/acme/\r\nX: 1"}
    )
    assert page.status == 200
    assert URL(page.url).path == "/orgs/acme/tickets"


async def test_a_long_comment_in_another_script_fits_and_an_oversized_form_is_named(
    site: Site,
) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    long = "中" * 20_000  # the limit, 180 KB form-encoded
    page = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": long})
    assert page.status == 200
    assert page.events() == ["opened", "comment"]
    huge = await browser.post(f"/orgs/acme/tickets/{seq}/comment", {"body": "中" * 70_000})
    assert huge.status == 413
    assert "larger than 512 KiB" in huge.alert()


async def test_reports_about_things_named_in_other_scripts_stay_apart(site: Site) -> None:
    browser = await site.signed_in()
    await browser.get("/orgs/acme/report")
    for name in ("Принтер", "打印机", "!!!", "???"):
        page = await browser.post("/orgs/acme/report", {"subject_name": name, "description": "x"})
        assert "opened" in page.html, name
    assert await site.store.count("acme") == 4


async def test_a_preview_past_the_limit_is_refused_like_a_save(site: Site) -> None:
    seq = await site.open()
    browser = await site.signed_in()
    await browser.get(f"/orgs/acme/tickets/{seq}")
    page = await browser.post(
        f"/orgs/acme/tickets/{seq}/edit", {"description": "x" * 20_001, "preview": "1"}
    )
    assert page.status == 422
    assert "at most 20000 characters" in page.alert()


async def test_a_new_token_secret_or_password_ends_the_sessions_opened_with_the_old(
    site: Site, db_url: str
) -> None:
    ops = await site.signed_in("ops")
    maria = await site.browser()
    await maria.sign_in(username="maria", password="maria-password")
    assert URL((await ops.get("/orgs/acme/tickets")).url).path == "/orgs/acme/tickets"
    text = site_config(db_url, users={"maria": ("write", "a-new-password")})
    old_digest = hashlib.sha256(token_value("ops").encode()).hexdigest()
    text = text.replace(old_digest, hashlib.sha256(b"a-new-ops-token").hexdigest())
    app = site.server.app
    assert app is not None
    app[WEB_CONTEXT].reload(parse(text))
    for browser in (ops, maria):
        assert "/login" in (await browser.get("/orgs/acme/tickets")).url


async def test_a_sign_out_posted_from_another_site_signs_nobody_out(site: Site) -> None:
    browser = await site.signed_in()
    other_site = await site.browser()  # no session cookie: as a cross-site post arrives
    async with other_site.session.post(
        site.base + "/logout", data={}, allow_redirects=False
    ) as response:
        assert response.status == 303
        assert not any(
            h.startswith("tocsin_session") for h in response.headers.getall("Set-Cookie", [])
        )
    assert URL((await browser.get("/orgs/acme/tickets")).url).path == "/orgs/acme/tickets"


async def test_an_error_page_is_never_cached_even_under_static(site: Site) -> None:
    browser = await site.signed_in()
    page = await browser.get("/static/")
    assert page.status in (403, 404)
    assert page.headers["Cache-Control"] == "no-store"


def test_a_traceback_on_a_terminal_shows_no_local_variables() -> None:
    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    logs.configure("info", "auto", out)
    try:
        password = "S3cret-Passw0rd"  # noqa: F841 - a local the traceback must not show

        def fail() -> None:
            raise RuntimeError("boom")

        try:
            fail()
        except RuntimeError:
            structlog.get_logger("test").exception("sign-in crashed")
    finally:
        logs.configure("info", "json")
    assert "boom" in out.getvalue()
    assert "S3cret-Passw0rd" not in out.getvalue()
    assert not re.search(r"password\s*=", out.getvalue())
