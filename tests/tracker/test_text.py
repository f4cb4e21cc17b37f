"""The markdown the monitor writes: what failed, since when, the last probe results."""

from __future__ import annotations

from tests.tracker.helpers import DEVICE, INTEGRATION, at, bad, ok
from tocsin.probes.observation import Health, Observation
from tocsin.tracker import ProbeResult, Reason, text
from tocsin.tracker.text import (
    BACK_ONLINE,
    describe,
    escape,
    members_listed,
    open_description,
    recovery_comment,
    reopen_comment,
    with_members,
)


def test_the_open_description_says_what_failed_since_when_and_the_last_results() -> None:
    recent = [
        ProbeResult(at(-150), ok()),
        ProbeResult(at(-120), bad()),
        ProbeResult(at(0), bad("timeout after 5 s", error="timeout", status=None, latency_ms=None)),
    ]
    text = open_description(DEVICE, "device_offline", at(-120), recent)
    assert text.splitlines() == [
        "**Device offline**: device `lobby-cam-1` is failing its health probe.",
        "",
        "- **What failed:** timeout after 5 s",
        "- **Error class:** `timeout`",
        "- **Since:** 2026-03-01 11:58:00 UTC",
        "",
        "Last probe results, newest first:",
        "",
        "| Time (UTC) | Result | Detail | Status | Latency | Error |",
        "|---|---|---|---|---|---|",
        "| 2026-03-01 12:00:00 UTC | unhealthy | timeout after 5 s |  |  | timeout |",
        "| 2026-03-01 11:58:00 UTC | unhealthy | HTTP 503 in 120 ms | 503 | 120 ms | http\\_5xx |",
        "| 2026-03-01 11:57:30 UTC | healthy | HTTP 200 in 40 ms | 200 | 40 ms |  |",
    ]


def test_the_open_description_gives_status_latency_and_error_text() -> None:
    failed = Observation(
        Health.UNHEALTHY,
        "HTTP 401",
        "integration_credentials_invalid",
        "auth",
        88.4,
        {"status_code": 401, "error": "token expired"},
    )
    text = open_description(
        INTEGRATION, "integration_credentials_invalid", at(0), [ProbeResult(at(0), failed)]
    )
    assert "**Integration credentials invalid**: integration `bms`" in text
    assert "- **Error:** token expired" in text
    assert "- **Status code:** 401" in text
    assert "- **Latency:** 88 ms" in text


def test_probe_text_cannot_break_the_table() -> None:
    nasty = bad("refused | reset\n**boom** [x](y) <b>", error="a|b")
    row = open_description(DEVICE, "device_offline", at(0), [ProbeResult(at(0), nasty)])
    table_row = row.splitlines()[-1]
    assert table_row.count(" | ") == 5  # six cells, whatever the probe said
    assert "\n**boom**" not in row
    assert escape("x" * 500).endswith("...")
    assert len(escape("x" * 500)) == 200


def test_the_recovery_comment_says_what_recovered_when_and_the_outage() -> None:
    text = recovery_comment(
        at(-3600), at(-60), at(0), ProbeResult(at(0), ok()), left_open="auto-resolve is off"
    )
    assert text.splitlines() == [
        "**Recovered** at 2026-03-01 11:59:00 UTC: healthy for 1m since.",
        "",
        "- **Outage:** 2026-03-01 11:00:00 UTC to 2026-03-01 11:59:00 UTC (59m)",
        "- **Last probe result:** HTTP 200 in 40 ms",
        "",
        "Left open: auto-resolve is off.",
    ]


def test_a_reopen_comment_names_a_new_kind_but_the_ticket_keeps_its_own() -> None:
    failed = bad("HTTP 503", kind="integration_unreachable")
    text = reopen_comment(
        Reason.REOPEN_IN_WINDOW,
        at(-3600),
        at(-120),
        [ProbeResult(at(0), failed)],
        "device_offline",
        "integration_unreachable",
    )
    assert text.startswith("**Reopened:** failing again since 2026-03-01 11:58:00 UTC")
    assert "- **Now:** Integration unreachable (the ticket keeps its kind)" in text


def test_describe_does_not_repeat_what_the_detail_says() -> None:
    assert describe(ok("HTTP 200 in 40 ms")) == "HTTP 200 in 40 ms"
    assert describe(ok("up")) == "up, status 200, 40 ms"


def test_the_unreachable_section_is_replaced_not_appended() -> None:
    base = "# Lobby switch offline\n\nNo answer since 10:00."
    listed = text.with_unreachable(base, ["cam-1", "cam-2"])
    assert listed == f"{base}\n\n{text.UNREACHABLE_HEADING} (2): `cam-1`, `cam-2`"
    again = text.with_unreachable(listed, ["cam-2"])
    assert again == f"{base}\n\n{text.UNREACHABLE_HEADING} (1): `cam-2`"
    assert text.with_unreachable(again, []) == base
    assert text.with_unreachable("", ["a`b"]) == f"{text.UNREACHABLE_HEADING} (1): `a'b`"
    many = text.with_unreachable(base, [f"d{n:03}" for n in range(205)])
    assert many.endswith("`d199` and 5 more")
    assert "(205)" in many


def test_the_members_a_description_lists_are_read_back() -> None:
    members = [(f"cam-{n}", "offline" if n % 2 else BACK_ONLINE) for n in range(5)]
    described = with_members("**Multiple devices offline**: ...\n\nA person's note.", members)
    assert members_listed(described) == [f"cam-{n}" for n in range(5)]
    assert members_listed("no list here") == []
    assert members_listed(with_members("x", [])) == []
