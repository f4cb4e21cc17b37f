"""The Tickets list (tabs, filters, search, pages), a ticket's page (timeline, actions) and
Report issue, which opens a ticket or joins one."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, Route, expect

from tests.web.conftest import ORG, Visitors, WebDaemon, ticket_path

LANDED = re.compile(rf"/orgs/{ORG}/tickets/(\d+)\?reported=(created|commented)$")


def rows(page: Page) -> list[int]:
    return [
        int(seq)
        for seq in page.locator("table.tickets tbody tr[data-seq]").evaluate_all(
            "rows => rows.map(r => r.dataset.seq)"
        )
    ]


def word() -> str:
    """A word no other ticket has, for a search to find."""
    return f"w{uuid.uuid4().hex[:10]}"


def test_the_list_shows_state_tabs_with_counts_and_rows_linking_to_their_ticket(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket(kind="leak", name="Basement pump")
    page = visitors.page("maria")
    for tab in ("open", "in_progress", "resolved", "all"):
        expect(page.locator(f"nav.tabs a[data-tab={tab}] span.count")).to_have_text(
            re.compile(r"^\d+$")
        )
    # The bare list is the API's: every state, under the All tab.
    expect(page.locator("nav.tabs a[data-tab=all]")).to_have_attribute("aria-current", "page")
    row = page.locator(f"table.tickets tbody tr[data-seq='{seq}']")
    expect(row).to_have_attribute("data-state", "open")
    expect(row).to_contain_text("Basement pump")
    expect(row).to_contain_text("leak")
    row.get_by_role("link", name=f"#{seq}").click()
    expect(page).to_have_url(re.compile(rf"{ticket_path(seq)}$"))
    expect(page.locator("#ticket-state")).to_have_text("Open")
    expect(page.locator("#timeline li[data-event]")).to_have_count(1)
    expect(page.locator("#timeline li[data-event=opened]")).to_be_visible()


def test_the_tabs_split_the_tickets_by_state(visitors: Visitors, daemon: WebDaemon) -> None:
    tag = word()
    waiting, started = (daemon.open_ticket(description=tag) for _ in range(2))
    daemon.act(started, "start")
    page = visitors.page("maria", f"/orgs/{ORG}/tickets?q={tag}")
    expect(page.locator("nav.tabs a[data-tab=open] span.count")).to_have_text("1")
    expect(page.locator("nav.tabs a[data-tab=in_progress] span.count")).to_have_text("1")
    expect(page.locator("nav.tabs a[data-tab=resolved] span.count")).to_have_text("0")
    expect(page.locator("nav.tabs a[data-tab=all] span.count")).to_have_text("2")
    assert rows(page) == [started, waiting]  # every state, newest first
    tabs = {
        "open": [waiting],
        "in_progress": [started],
        "resolved": [],
        "all": [started, waiting],
    }
    for tab, expected in tabs.items():
        page.locator(f"nav.tabs a[data-tab={tab}]").click()
        current = page.locator(f"nav.tabs a[data-tab={tab}]")
        expect(current).to_have_attribute("aria-current", "page")
        expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(len(expected))
        assert rows(page) == expected
        # The search is kept across tabs.
        expect(page.locator("form#filters input[name=q]")).to_have_value(tag)


def test_the_filters_narrow_the_list_by_source_and_kind(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    tag = word()
    workflow = daemon.open_ticket(description=tag, kind="door-stuck")
    report = daemon.open_ticket(description=tag, source="user", kind="user_report")
    page = visitors.page("maria")
    filters = page.locator("form#filters")
    filters.locator("input[name=q]").fill(tag)
    filters.locator("select[name=source]").select_option("workflow")
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"source=workflow"))
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(1)
    assert rows(page) == [workflow]
    filters.locator("select[name=source]").select_option("")
    filters.locator("select[name=kind]").select_option("user_report")
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"kind=user_report"))
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(1)
    assert rows(page) == [report]
    # The filters the page shows are the ones in force.
    expect(filters.locator("select[name=kind]")).to_have_value("user_report")
    expect(filters.locator("input[name=q]")).to_have_value(tag)
    for name in ("source", "kind", "subject_type", "space"):
        expect(filters.locator(f"select[name={name}]")).to_have_count(1)


def test_a_search_finds_tickets_by_a_word_of_their_description(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    tag = word()
    wanted = daemon.open_ticket(description=f"The fan in the attic hums ({tag}).")
    daemon.open_ticket(description="Something else entirely.")
    page = visitors.page("maria")
    page.locator("form#filters input[name=q]").fill(tag)
    page.locator("form#filters").get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(rf"q={tag}"))
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(1)
    assert rows(page) == [wanted]
    page.locator("form#filters input[name=q]").fill(word())
    page.locator("form#filters").get_by_role("button", name="Filter").click()
    expect(page.locator("p.empty")).to_have_text("No tickets here.")


def test_older_tickets_are_one_next_link_away(visitors: Visitors, daemon: WebDaemon) -> None:
    tag = word()
    opened = [daemon.open_ticket(description=tag) for _ in range(51)]
    page = visitors.page("maria", f"/orgs/{ORG}/tickets?q={tag}")
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(50)
    assert rows(page) == opened[:0:-1]
    page.locator("a[rel=next]").click()
    expect(page.locator("table.tickets tbody tr[data-seq]")).to_have_count(1)
    assert rows(page) == [opened[0]]
    expect(page.locator("a[rel=next]")).to_have_count(0)


def test_comment_start_resolve_and_reopen_show_on_the_timeline(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    page = visitors.page("maria", ticket_path(seq))
    timeline = page.locator("#timeline li[data-event]")
    state = page.locator("#ticket-state")
    expect(page.locator("button[data-action=reopen]")).to_have_count(0)

    page.locator("textarea[name=body]").fill("Checked the **hinge**.")
    page.locator("button[data-action=comment]").click()
    expect(timeline).to_have_count(2)
    comment = page.locator("#timeline li[data-event=comment]")
    expect(comment).to_contain_text("maria")
    expect(comment.locator(".markdown strong")).to_have_text("hinge")  # markdown, rendered

    page.locator("button[data-action=start]").click()
    expect(state).to_have_text("In Progress")
    expect(page.locator("#timeline li[data-event=started]")).to_contain_text("maria")
    expect(page.locator("button[data-action=start]")).to_have_count(0)

    page.locator("form:has(button[data-action=resolve]) textarea[name=comment]").fill("Oiled it.")
    page.locator("button[data-action=resolve]").click()
    expect(state).to_have_text("Resolved")
    expect(page.locator("#timeline li[data-event=resolved]")).to_contain_text("Oiled it.")
    expect(page.locator("button[data-action=resolve]")).to_have_count(0)

    page.locator("form:has(button[data-action=reopen]) textarea[name=comment]").fill("Stuck again.")
    page.locator("button[data-action=reopen]").click()
    expect(state).to_have_text("Open")
    expect(page.locator("#timeline li[data-event=reopened]")).to_contain_text("Stuck again.")
    events = timeline.evaluate_all("items => items.map(i => i.dataset.event)")
    assert events == ["opened", "comment", "started", "resolved", "reopened"]
    assert daemon.ticket(seq)["state"] == "open"


def test_a_description_is_previewed_then_saved(visitors: Visitors, daemon: WebDaemon) -> None:
    seq = daemon.open_ticket(description="Old words.")
    page = visitors.page("maria", ticket_path(seq))
    page.get_by_text("Edit description").click()
    page.locator("textarea[name=description]").fill("New words, *with emphasis*.")
    page.locator("button[name=preview]").click()
    expect(page.locator("#preview em")).to_have_text("with emphasis")
    expect(page.locator("#description")).to_have_text("Old words.")  # nothing written yet
    expect(page.locator("textarea[name=description]")).to_have_value("New words, *with emphasis*.")
    page.locator("button[data-action=edit]").click()
    expect(page.locator("#description em")).to_have_text("with emphasis")
    expect(page.locator("#timeline li[data-event=description_edited]")).to_be_visible()
    assert daemon.ticket(seq)["description"] == "New words, *with emphasis*."


def test_a_race_lost_to_someone_else_shows_their_change_as_an_error(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    seq = daemon.open_ticket()
    mine, theirs = visitors.page("maria"), visitors.page("ops")
    # The race is lost in the second before the live update would have taken the button away:
    # this page hears nothing, so its Start is still there when its person clicks.
    blocked: list[str] = []

    def deaf(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort()

    mine.route(re.compile(r"/live\?"), deaf)
    for page in (mine, theirs):
        page.goto(ticket_path(seq))
    for _ in range(100):  # the page opens its stream once loaded: wait for the attempt
        if blocked:
            break
        mine.wait_for_timeout(50)
    assert blocked, "the page opened no live stream to block"
    theirs.locator("button[data-action=start]").click()
    expect(theirs.locator("#ticket-state")).to_have_text("In Progress")
    with mine.expect_response(lambda r: r.request.method == "POST") as answer:
        mine.locator("button[data-action=start]").click()
    assert answer.value.status == 409
    expect(mine.locator(".flash-error[role=alert]")).to_contain_text(
        "cannot start a ticket that is in_progress"
    )
    expect(mine.locator("#ticket-state")).to_have_text("In Progress")
    events = [e["type"] for e in daemon.ticket(seq)["timeline"]]
    assert events == ["opened", "started"]


def test_a_ticket_that_is_not_there_is_a_404_page(visitors: Visitors) -> None:
    page = visitors.page("maria")
    answer = page.goto(ticket_path(999_999))
    assert answer is not None
    assert answer.status == 404
    expect(page.locator(".flash-error[role=alert]")).to_be_visible()
    answer = page.goto(f"/orgs/{ORG}/tickets/seven")
    assert answer is not None
    assert answer.status == 400
    expect(page.locator(".flash-error[role=alert]")).to_contain_text("positive integer")


# Report issue: find the subject (or name one), say what is wrong, and land on the ticket,
# which says whether the report opened it or joined one already open.


def landed_on(page: Page) -> int:
    """The seq of the ticket page a report landed on."""
    expect(page).to_have_url(LANDED)
    found = LANDED.search(page.url)
    assert found is not None
    return int(found.group(1))


def report(page: Page, find: str, description: str) -> None:
    page.goto(f"/orgs/{ORG}/report")
    page.locator("form#find input[name=find]").fill(find)
    page.locator("form#find").get_by_role("button", name="Find").click()
    form = page.locator("form#report")
    form.locator("textarea[name=description]").fill(description)
    form.locator("button#report-submit").click()


def test_a_report_about_a_known_device_opens_a_ticket_then_joins_it(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    page = visitors.page("maria")
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="Report issue").click()
    page.locator("form#find input[name=find]").fill("chill")
    page.locator("form#find").get_by_role("button", name="Find").click()
    choice = page.locator("form#report input[type=radio][name=subject]")
    expect(choice).to_have_count(1)
    expect(choice).to_have_value("device:chiller")
    expect(choice).to_be_checked()
    expect(page.locator("form#report input[name=subject_name]")).to_have_count(0)
    page.locator("form#report textarea[name=description]").fill("It is making a *grinding* noise.")
    page.locator("button#report-submit").click()

    seq = landed_on(page)
    expect(page.locator(".flash-ok")).to_have_text(f"Your report opened #{seq}.")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"#{seq} User report: Chiller 1")
    expect(page.locator("#description em")).to_have_text("grinding")
    ticket = daemon.ticket(seq)
    assert (ticket["source"], ticket["kind"]) == ("user", "user_report")
    assert ticket["subject"] == {"type": "device", "id": "chiller", "name": "Chiller 1"}

    report(page, "Chiller 1", "Still grinding, louder now.")
    assert landed_on(page) == seq
    expect(page.locator(".flash-ok")).to_contain_text(
        f"#{seq} was already open for this subject: your report was added to it as a comment."
    )
    expect(page.locator("#timeline li[data-event=comment]")).to_contain_text("louder now")


def test_a_report_about_something_not_listed_names_it(
    visitors: Visitors, daemon: WebDaemon
) -> None:
    page = visitors.page("maria", f"/orgs/{ORG}/report?find=coffee")
    expect(page.locator("form#report input[type=radio]")).to_have_count(0)
    expect(page.locator("form#report")).to_contain_text("Nothing matches")
    form = page.locator("form#report")
    form.locator("input[name=subject_name]").fill("Coffee machine, 2nd floor")
    form.locator("textarea[name=description]").fill("Leaks onto the counter.")
    form.locator("button#report-submit").click()
    seq = landed_on(page)
    expect(page.locator(".flash-ok")).to_have_text(f"Your report opened #{seq}.")
    subject = daemon.ticket(seq)["subject"]
    assert subject["type"] == "other"
    assert subject["name"] == "Coffee machine, 2nd floor"


def test_a_report_naming_no_subject_is_refused_with_the_words_kept(visitors: Visitors) -> None:
    page = visitors.page("maria", f"/orgs/{ORG}/report")
    page.locator("form#report textarea[name=description]").fill("Something is off somewhere.")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.locator("button#report-submit").click()
    assert answer.value.status == 422
    expect(page.locator(".flash-error[role=alert]")).to_contain_text("pick a subject")
    expect(page.locator("form#report textarea[name=description]")).to_have_value(
        "Something is off somewhere."
    )
