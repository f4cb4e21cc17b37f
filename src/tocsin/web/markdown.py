"""Markdown as people write it in descriptions and comments, made safe to show: markdown-it-py
with raw HTML off (CommonMark plus tables and strikethrough), then nh3 (ammonia) keeps only
harmless tags and attributes, and links get rel="noopener noreferrer"."""

from __future__ import annotations

import functools

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

# nh3's defaults minus images (a page must not fetch anything but the daemon's own).
_TAGS = nh3.ALLOWED_TAGS - {"img"}
_SCHEMES = {"http", "https", "mailto"}


@functools.lru_cache(maxsize=4096)
def render(text: str) -> Markup:
    """HTML for `text`, safe to put in a page as it is (timelines repeat: cached)."""
    html = _md.render(text)
    return Markup(nh3.clean(html, tags=_TAGS, url_schemes=_SCHEMES))
