"""Opaque page cursors: "<kind>:<id>" in URL-safe base64. Anything a client forges decodes to
None, never to a server error."""

from __future__ import annotations

import base64
import binascii


def encode(kind: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode().rstrip("=")


def decode(kind: str, cursor: str) -> int | None:
    """The position in a cursor of `kind`, or None for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    # ASCII digits only (int() rejects "²" and would accept "٣"), and few enough of them to fit
    # the database's 64-bit integer.
    if prefix != kind or not (number.isascii() and number.isdigit()) or len(number) > 18:
        return None
    return int(number)
