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


CACHED_UP_TO = 4000  # characters: longer texts (rare, and up to 20,000) are rendered each time


def render(text: str) -> Markup:
    """HTML for `text`, safe to put in a page as it is (timelines repeat: short texts are
    cached, at most 4,096 of them, so the cache stays under ~100 MB)."""
    return _cached(text) if len(text) <= CACHED_UP_TO else _render(text)


def _render(text: str) -> Markup:
    html = _md.render(text)
    return Markup(nh3.clean(html, tags=_TAGS, url_schemes=_SCHEMES))


_cached = functools.lru_cache(maxsize=4096)(_render)
