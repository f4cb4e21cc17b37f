"""Webhook bodies and Standard Webhooks signatures: pure functions, no I/O, no clock.

A body is built from the trigger row the ticket store wrote (its type, time and `data` snapshot)
and the server's public base URL; the same row always gives the same bytes, so a retry sends
exactly what the first attempt sent. Signing follows the Standard Webhooks spec: the signed
content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256 keyed by the bytes of the
``whsec_`` secret, sent as ``v1,<base64>``; with two keys (rotation) both signatures are sent,
space-separated, and a receiver holding either secret accepts the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tocsin.tickets.model import rfc3339, ticket_url

Format = Literal["standard", "slack", "teams"]
PING_TYPE = "webhook.test"
MAX_CHAT_COMMENT = 500

_VERBS = {
    "ticket.opened": "opened",
    "ticket.started": "started (In Progress)",
    "ticket.comment_added": "commented",
    "ticket.resolved": "resolved",
    "ticket.reopened": "reopened",
}


@dataclass(frozen=True)
class TriggerRow:
    """The parts of a `triggers` row a webhook carries."""

    type: str
    created_at: datetime
    data: Mapping[str, Any]


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON: the bytes that are signed are the bytes that are sent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def standard_body(trigger: TriggerRow, base_url: str) -> dict[str, Any]:
    """`{"type", "timestamp", "data": {"org", "ticket" (with its url), "event"}}`."""
    data = trigger.data
    ticket = dict(data["ticket"])
    ticket["url"] = ticket_url(base_url, str(data["org"]), int(ticket["seq"]))
    return {
        "type": trigger.type,
        "timestamp": rfc3339(trigger.created_at),
        "data": {"org": data["org"], "ticket": ticket, "event": dict(data["event"])},
    }


def chat_text(trigger: TriggerRow, base_url: str) -> str:
    """One plain-text line or two for a chat channel: what happened, to what, by whom, a link."""
    data = trigger.data
    ticket, event = data["ticket"], data["event"]
    subject = ticket["subject"]
    actor = event.get("actor", {}).get("name", "someone")
    verb = _VERBS.get(trigger.type, trigger.type)
    text = (
        f"[{data['org']}] #{ticket['seq']} {verb} by {actor}: {ticket['kind']} - "
        f"{subject['name']} ({subject['type']} {subject['id']})"
    )
    note = event.get("body") or event.get("comment")
    if isinstance(note, str) and note.strip():
        short = note.strip()
        if len(short) > MAX_CHAT_COMMENT:
            short = short[: MAX_CHAT_COMMENT - 1] + "\u2026"
        text += f"\n> {short}"
    url = ticket_url(base_url, str(data["org"]), int(ticket["seq"]))
    return f"{text}\n{url}"


def slack_escape(text: str) -> str:
    """Slack treats <, > and & as control characters (<!channel> pings everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def teams_message(text: str) -> dict[str, Any]:
    """An Adaptive Card message, as Teams' "post to a channel" webhook workflows accept."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "type": "AdaptiveCard",
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "version": "1.4",
                    "body": [{"type": "TextBlock", "text": text, "wrap": True}],
                },
            }
        ],
    }


def build_body(trigger: TriggerRow, base_url: str, fmt: Format) -> bytes:
    """The body for one endpoint format, as bytes ready to sign and send."""
    if fmt == "standard":
        return encode(standard_body(trigger, base_url))
    text = chat_text(trigger, base_url)
    if fmt == "slack":
        return encode({"text": slack_escape(text)})
    return encode(teams_message(text))


def ping_body(name: str, at: datetime, fmt: Format) -> bytes:
    """The body of `tocsin webhooks test NAME`: a signed message that is no ticket event."""
    text = f"tocsin test message for webhook {name!r}: signed delivery works."
    if fmt == "standard":
        return encode({"type": PING_TYPE, "timestamp": rfc3339(at), "data": {"webhook": name}})
    if fmt == "slack":
        return encode({"text": slack_escape(text)})
    return encode(teams_message(text))


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per key, space-separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )


def signed_headers(
    keys: Sequence[bytes],
    msg_id: str,
    at: datetime,
    body: bytes,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header of one attempt: the endpoint's own, then content type and the signature.

    `at` is the attempt's time (each retry is signed afresh, so receivers' 5-minute tolerance
    holds); `msg_id` is the delivery's, the same on every retry.
    """
    timestamp = int(at.timestamp())
    headers = dict(extra or {})
    headers["content-type"] = "application/json"
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    headers["webhook-signature"] = signature(keys, msg_id, timestamp, body)
    return headers
