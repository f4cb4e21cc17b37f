"""Pure pieces of the pages: markdown made safe, display names, relative times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tocsin.web.markdown import render
from tocsin.web.render import ago, kind_name


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        pytest.param("**bold** _it_", "<strong>bold</strong>", None, id="emphasis"),
        pytest.param("<script>alert(1)</script>", "&lt;script&gt;", "<script", id="script"),
        pytest.param('<img src=x onerror="a()">', "&lt;img", "<img", id="raw-img"),
        pytest.param("![pic](http://x.example/p.png)", "", "<img", id="markdown-img"),
        pytest.param("[x](javascript:alert(1))", "[x](javascript:alert(1))", "href", id="js-link"),
        pytest.param("[x](https://ok.example)", 'rel="noopener noreferrer"', None, id="link"),
        pytest.param("| a |\n|---|\n| 1 |", "<td>1</td>", None, id="table"),
        pytest.param("`<b>`", "<code>&lt;b&gt;</code>", "<b>", id="code"),
    ],
)
def test_markdown_keeps_formatting_and_drops_anything_active(
    text: str, kept: str, gone: str | None
) -> None:
    html = str(render(text))
    assert kept in html
    if gone is not None:
        assert gone not in html


def test_kinds_show_their_display_names_and_free_form_kinds_as_given() -> None:
    assert kind_name("device_offline") == "Device offline"
    assert kind_name("multiple_devices_offline") == "Multiple devices offline"
    assert kind_name("backup job late") == "backup job late"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (10, "just now"),
        (50, "1 min ago"),
        (600, "10 min ago"),
        (7300, "2 h ago"),
        (90000, "1 d ago"),
    ],
)
def test_times_read_as_how_long_ago(seconds: int, shown: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert ago(now - timedelta(seconds=seconds), now) == shown
