"""Bodies and signatures are pure functions: checked here against the standardwebhooks library,
with hypothesis for the signature over any id, time and body."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from tests.delivery.conftest import OLD_SECRET, SECRET
from tocsin.config import decode_webhook_secret
from tocsin.delivery.payload import (
    TriggerRow,
    build_body,
    ping_body,
    signature,
    signed_headers,
    standard_body,
)

KEY = decode_webhook_secret(SECRET)
OLD_KEY = decode_webhook_secret(OLD_SECRET)
AT = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
TICKET = {
    "org": "acme",
    "seq": 42,
    "state": "open",
    "source": "health_monitor",
    "kind": "device_offline",
    "subject": {"type": "device", "id": "cam-1", "name": "Lobby camera"},
    "description": "",
    "dedup_key": None,
    "opened_at": "2026-03-04T05:06:07.891Z",
    "updated_at": "2026-03-04T05:06:07.891Z",
    "resolved_at": None,
}
OPENED = TriggerRow(
    "ticket.opened",
    AT,
    {
        "org": "acme",
        "ticket": TICKET,
        "event": {
            "id": 7,
            "type": "opened",
            "at": "2026-03-04T05:06:07.891Z",
            "actor": {"type": "health_monitor", "name": "health monitor"},
        },
    },
)


def test_the_standard_body_is_type_timestamp_and_data_with_the_ticket_url() -> None:
    body = standard_body(OPENED, "https://tocsin.example/")
    assert body == {
        "type": "ticket.opened",
        "timestamp": "2026-03-04T05:06:07.891Z",
        "data": {
            "org": "acme",
            "ticket": {**TICKET, "url": "https://tocsin.example/orgs/acme/tickets/42"},
            "event": OPENED.data["event"],
        },
    }
    assert "url" not in TICKET  # the trigger row's snapshot is not changed


def test_the_same_trigger_always_gives_the_same_bytes() -> None:
    first = build_body(OPENED, "http://x", "standard")
    assert first == build_body(OPENED, "http://x", "standard")
    assert json.loads(first)["data"]["ticket"]["seq"] == 42


def test_signed_headers_verify_with_the_standardwebhooks_library() -> None:
    now = datetime.now(UTC)
    body = build_body(OPENED, "http://x", "standard")
    headers = signed_headers([KEY], "msg_1", now, body, {"X-Extra": "1"})
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["X-Extra"] == "1"
    assert Webhook(SECRET).verify(body, headers)["type"] == "ticket.opened"


def test_two_keys_give_two_signatures_and_either_secret_verifies() -> None:
    now = datetime.now(UTC)
    body = build_body(OPENED, "http://x", "standard")
    headers = signed_headers([KEY, OLD_KEY], "msg_1", now, body)
    assert headers["webhook-signature"].count("v1,") == 2
    assert Webhook(SECRET).verify(body, headers)
    assert Webhook(OLD_SECRET).verify(body, headers)


def test_a_signature_matches_the_reference_implementation_s() -> None:
    # standardwebhooks' sign() reads the datetime's wall time as UTC: give it a UTC one.
    expected = Webhook(SECRET).sign("msg_2", AT, '{"a":1}')
    assert signature([KEY], "msg_2", int(AT.timestamp()), b'{"a":1}') == expected


@given(
    msg_id=st.text(st.characters(codec="ascii", exclude_characters=" "), min_size=1, max_size=40),
    seconds=st.integers(min_value=-250, max_value=250),
    body=st.text(max_size=300),
)
def test_any_message_signed_now_verifies(msg_id: str, seconds: int, body: str) -> None:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    data = body.encode()
    headers = signed_headers([KEY], msg_id, at, data)
    Webhook(SECRET).verify(data, headers, json_parse=False)


def test_the_slack_text_says_what_happened_and_escapes_slack_markup() -> None:
    comment = TriggerRow(
        "ticket.comment_added",
        AT,
        {
            **OPENED.data,
            "event": {
                "id": 8,
                "type": "comment",
                "actor": {"type": "user", "name": "Ann <ops>"},
                "body": "<!here> R&D says " + "x" * 600,
            },
        },
    )
    text = json.loads(build_body(comment, "http://t", "slack"))["text"]
    first, quote, link = text.split("\n")
    assert first == (
        "[acme] #42 commented by Ann &lt;ops&gt;: device_offline - Lobby camera (device cam-1)"
    )
    assert quote.startswith("&gt; &lt;!here&gt; R&amp;D says xxx")
    assert quote.endswith("\u2026")
    assert link == "http://t/orgs/acme/tickets/42"


def test_the_teams_body_is_an_adaptive_card_message() -> None:
    body = json.loads(build_body(OPENED, "http://t", "teams"))
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["content"]["type"] == "AdaptiveCard"
    assert "#42 opened by health monitor" in attachment["content"]["body"][0]["text"]


def test_a_ping_is_a_webhook_test_message_in_each_format() -> None:
    assert json.loads(ping_body("ops", AT, "standard")) == {
        "type": "webhook.test",
        "timestamp": "2026-03-04T05:06:07.891Z",
        "data": {"webhook": "ops"},
    }
    assert "ops" in json.loads(ping_body("ops", AT, "slack"))["text"]
    assert json.loads(ping_body("ops", AT, "teams"))["type"] == "message"


def test_a_secret_decodes_with_or_without_padding() -> None:
    raw = bytes(range(20))
    padded = "whsec_" + base64.b64encode(raw).decode()
    assert decode_webhook_secret(padded) == raw
    assert decode_webhook_secret(padded.rstrip("=")) == raw
