"""Live pages: a change made elsewhere shows on an open page within a second or two, without
a reload (the page fetches itself again when the server's event stream says something
changed, and swaps its #live part)."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.web.conftest import (
    ORG,
    REFRESHED,
    Visitors,
    WebDaemon,
    not_reloaded,
    open_live,
    ticket_path,
)


def test_a_new_ticket_appears_on_open_lists_without_a_reload(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    pages = [visitors.context(who).new_page() for who in ("rui", "maria")]  # two browsers
    for page in pages:
        open_live(page, f"/orgs/{ORG}/tickets")
    seq = daemon.open_ticket(name="Loading bay shutter")
    for page in pages:
        row = page.locator(f"table.tickets tbody tr[data-seq='{seq}']")
        expect(row).to_contain_text("Loading bay shutter")
        expect(page.locator("body")).to_have_attribute("data-refreshed", REFRESHED)
        expect(page.locator("nav.tabs a[data-tab=open] span.count")).not_to_have_text("0")
        assert not_reloaded(page)


def test_a_ticket_page_follows_a_change_made_elsewhere(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.context("rui").new_page()
    open_live(page, ticket_path(seq))
    daemon.act(seq, "start")
    expect(page.locator("#ticket-state")).to_have_text("In Progress")
    expect(page.locator("#timeline li[data-event=started]")).to_contain_text("ops")
    assert not_reloaded(page)


# Watches, from inside the page, the live events it hears, its timers (a page spreads its
# refreshes over a random moment) and its fetches: once an event came and no timer is left,
# the page has decided whether to refresh.
WATCH_THE_PAGE = """
window.__events = 0; window.__timers = 0; window.__fetches = 0;
const PageEventSource = window.EventSource;
window.EventSource = function (url, options) {
  const source = new PageEventSource(url, options);
  source.addEventListener("tickets", () => { window.__events += 1; });
  return source;
};
const pageSetTimeout = window.setTimeout;
window.setTimeout = (run, ms, ...rest) => {
  window.__timers += 1;
  return pageSetTimeout((...a) => { window.__timers -= 1; return run(...a); }, ms, ...rest);
};
const pageFetch = window.fetch;
window.fetch = (...args) => { window.__fetches += 1; return pageFetch(...args); };
"""
SETTLED = "() => window.__events >= 1 && window.__timers === 0"


def test_a_live_refresh_waits_while_someone_is_focused_in_the_list(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    before = daemon.open_ticket()
    page = visitors.context("maria").new_page()
    page.add_init_script(WATCH_THE_PAGE)
    open_live(page, f"/orgs/{ORG}/tickets")
    link = page.locator(f"tr[data-seq='{before}'] a")
    link.focus()
    seq = daemon.open_ticket()
    page.wait_for_function(SETTLED)
    # Someone on a link in the list keeps it: no fetch, no swap under them ...
    assert page.evaluate("window.__fetches") == 0
    expect(link).to_be_focused()
    expect(page.locator(f"tr[data-seq='{seq}']")).to_have_count(0)
    # ... and once they leave the list, the refresh that waited comes in.
    page.locator("form#filters input[name=q]").focus()
    expect(page.locator(f"table.tickets tbody tr[data-seq='{seq}']")).to_be_visible()
    assert page.evaluate("window.__fetches") == 1
    assert not_reloaded(page)
