"""How the pages serve people: no serious accessibility problem (axe-core, light and dark), a
phone's 360 px width without sideways scrolling, a light list page that fetches nothing from
elsewhere, and a ticket worked with the keyboard alone. Screenshots go to TOCSIN_SCREENSHOTS
(default artifacts/screenshots/) for people to look at."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Response, expect

from tests.web.conftest import ORG, REPO, SCREENSHOTS, Visitors, WebDaemon, ticket_path

AXE_JS = Path(
    os.environ.get("TOCSIN_AXE_JS")
    or REPO / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
)
PHONE = {"width": 360, "height": 740}
MAX_LIST_BYTES = 150 * 1024
BLOCKING = ("serious", "critical")
PAGES = ["login", "tickets", "ticket", "subjects", "report"]
SHOTS = ("tickets", "ticket", "subjects")  # saved as NAME.png and NAME-dark.png


@pytest.fixture(scope="module")
def showcase(daemon: WebDaemon) -> int:
    """A full first page of tickets (long names and all), and one ticket with a timeline to
    look at: its seq."""
    for n in range(50):
        daemon.open_ticket(
            kind=("door-stuck", "leak", "fire-panel-fault")[n % 3],
            name=f"Air handling unit {n} on the roof of building {'B' * (n % 4 + 1)}",
            description=f"Reported by the night shift (round {n}).",
        )
    seq = daemon.open_ticket(
        kind="fire-panel-fault",
        name="Fire alarm panel, east stairwell",
        description="The panel shows **Fault 12** (earth leakage) since 03:10.\n\n"
        "- zone 4 isolated\n- engineer called",
    )
    daemon.act(seq, "comments", {"body": "Engineer on site at 08:00."})
    daemon.act(seq, "start")
    daemon.act(seq, "resolve", {"comment": "Replaced the zone 4 detector."})
    daemon.act(seq, "reopen", {"comment": "Fault is back."})
    return seq


def page_path(name: str, seq: int) -> str:
    return {
        "login": "/login",
        "tickets": f"/orgs/{ORG}/tickets",
        "ticket": ticket_path(seq),
        "subjects": f"/orgs/{ORG}/subjects",
        "report": f"/orgs/{ORG}/report?find=room",
    }[name]


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def readable(violations: list[tuple[str, dict[str, Any]]]) -> str:
    lines = []
    for scheme, v in violations:
        lines.append(f"{scheme}: {v['impact']} {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"][:5]:
            lines.append(f"    {' '.join(node['target'])}: {node['failureSummary']}")
    return "\n".join(lines)


def axe_js() -> Path:
    """axe-core's script; its absence fails the test (the check is not optional)."""
    if not AXE_JS.is_file():
        pytest.fail(
            f"axe-core is missing at {AXE_JS}: run `npm install --no-audit --no-fund "
            f"--prefix {REPO / '.cache' / 'npm'} axe-core@4`, or set TOCSIN_AXE_JS"
        )
    return AXE_JS


@pytest.mark.parametrize("name", PAGES)
def test_the_page_has_no_serious_accessibility_violation_in_light_or_dark(
    visitors: Visitors, showcase: int, name: str
) -> None:
    # The pages' CSP refuses inline script (as it should): this context alone bypasses it.
    who = None if name == "login" else "maria"
    page = visitors.page(who, page_path(name, showcase), bypass_csp=True, color_scheme="light")
    expect(page.locator("main h1")).to_be_visible()
    page.add_script_tag(path=axe_js())
    found = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        if name in SHOTS:
            screenshot(page, name if scheme == "light" else f"{name}-dark")
        results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
        found += [(scheme, v) for v in results["violations"] if v["impact"] in BLOCKING]
    assert not found, f"axe on {name}:\n{readable(found)}"


def test_every_page_fits_a_phone_without_sideways_scrolling(
    visitors: Visitors, showcase: int
) -> None:
    signed_out = visitors.page(viewport=PHONE)
    page = visitors.page("maria", viewport=PHONE)
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(50)
    screenshot(page, "tickets-phone")
    widths = {}
    for name in PAGES:
        shown = signed_out if name == "login" else page
        shown.goto(page_path(name, showcase))
        expect(shown.locator("main h1")).to_be_visible()
        widths[name] = shown.evaluate("document.documentElement.scrollWidth")
    too_wide = {name: width for name, width in widths.items() if width > PHONE["width"]}
    assert not too_wide, f"wider than a {PHONE['width']} px phone: {too_wide}"


def test_the_list_page_is_light_and_fetches_only_from_the_daemon(
    visitors: Visitors, daemon: WebDaemon, showcase: int
) -> None:
    page = visitors.context("maria").new_page()  # a cold cache
    requested: list[str] = []
    responses: list[Response] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: responses.append(response))
    with page.expect_response(lambda r: f"/orgs/{ORG}/live" in r.url):  # the last it asks
        page.goto(f"/orgs/{ORG}/tickets", wait_until="load")
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(50)
    elsewhere = [url for url in requested if not url.startswith(daemon.base + "/")]
    assert not elsewhere, f"requests to other origins: {elsewhere}"
    kinds = {r.request.resource_type for r in responses}
    assert {"document", "stylesheet", "script"} <= kinds, kinds
    weighed = [r for r in responses if r.request.resource_type != "eventsource"]  # endless
    sizes = {r.url: len(r.body()) for r in weighed if 200 <= r.status < 300}
    total = sum(sizes.values())
    assert total < MAX_LIST_BYTES, f"{total} bytes: {sizes}"


def tab_to(page: Page, selector: str, most: int = 40) -> None:
    """Press Tab until the focus is on `selector`."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{most} presses of Tab never reached {selector}")


def test_a_ticket_is_opened_and_commented_on_with_the_keyboard_alone(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    tag = f"k{uuid.uuid4().hex[:10]}"
    seq = daemon.open_ticket(description=tag)
    page = visitors.page("maria", f"/orgs/{ORG}/tickets?q={tag}")
    tab_to(page, f"tr[data-seq='{seq}'] a")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"{ticket_path(seq)}$"))
    tab_to(page, "textarea[name=body]")
    page.keyboard.type("Typed without a mouse.")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.action") == "comment"
    page.keyboard.press("Enter")
    expect(page.locator("#timeline li[data-event=comment]")).to_contain_text(
        "Typed without a mouse."
    )
