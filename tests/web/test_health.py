"""The health board: every subject by space with its health and the counts on top, following
the monitor live."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.web.conftest import (
    DEVICES,
    ORG,
    REFRESHED,
    SPACES,
    Devices,
    Visitors,
    not_reloaded,
    open_live,
)


def test_the_health_board_shows_each_device_in_its_space_with_counts(
    visitors: Visitors,
) -> None:
    page = visitors.page("rui")
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="Health").click()
    for ident, (name, space) in DEVICES.items():
        row = page.locator(f'section[data-space="{space}"] tr[data-subject="device:{ident}"]')
        # Up once the first probes are in (the page follows the monitor live).
        expect(row).to_have_attribute("data-health", "up")
        expect(row).to_contain_text(name)
    for ident, name in SPACES.items():
        heading = page.locator(f'section[data-space="{ident}"] h2')
        expect(heading).to_have_text(name)
    counts = page.locator("#health-counts")
    for key in ("down", "failing", "flapping", "recovering", "covered", "maintenance", "up"):
        expect(counts.locator(f"[data-health-count={key}]")).to_have_count(1)
    up = page.locator("tr[data-subject][data-health=up]").count()
    expect(counts.locator("[data-health-count=up] .n")).to_have_text(str(up))
    expect(counts.locator("[data-health-count=down] .n")).to_have_text("0")


def test_the_health_board_filters_by_name_and_by_health(visitors: Visitors) -> None:
    page = visitors.page("rui", f"/orgs/{ORG}/subjects")
    expect(page.locator('tr[data-subject="device:boiler"]')).to_have_attribute("data-health", "up")
    page.locator("form#board-filters input[name=q]").fill("boil")
    page.locator("form#board-filters").get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-subject]")).to_have_count(1)
    expect(page.locator('tr[data-subject="device:boiler"]')).to_be_visible()
    page.goto(f"/orgs/{ORG}/subjects?health=down")
    expect(page.locator("tr[data-subject]")).to_have_count(0)
    expect(page.locator("p.empty")).to_have_text("No subjects match.")


def test_the_health_board_shows_a_device_going_down_without_a_reload(
    visitors: Visitors, devices: Devices
) -> None:
    page = visitors.context("rui").new_page()
    open_live(page, f"/orgs/{ORG}/subjects")
    row = page.locator('tr[data-subject="device:boiler"]')
    expect(row).to_have_attribute("data-health", "up")
    devices.switches["boiler"].ok = False
    try:
        expect(row).to_have_attribute("data-health", re.compile("^(failing|down)$"))
        expect(page.locator("body")).to_have_attribute("data-refreshed", REFRESHED)
        assert not_reloaded(page)
    finally:
        devices.switches["boiler"].ok = True
