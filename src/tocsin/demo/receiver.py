"""A webhook receiver that checks Standard Webhooks signatures and prints one line a delivery.

It verifies as any receiver should: the HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}``
keyed by the ``whsec_`` secret must match one of the ``v1,`` signatures (compared in constant
time), and the timestamp must be within five minutes. A verified delivery gets 204; a forged
or stale one 401 (and a line saying so). Deliveries are at least once: a repeated webhook-id is
marked as a repeat.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aiohttp import web

from tocsin.config import decode_webhook_secret
from tocsin.delivery.payload import signature

TOLERANCE_SECONDS = 5 * 60
MAX_BODY = 1 << 20


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> str | None:
    """None when the signature is good; else why not (for the printed line)."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return "webhook-* headers missing"
    try:
        timestamp = int(stamp)
    except ValueError:
        return "bad webhook-timestamp"
    if abs(now - timestamp) > tolerance:
        return "timestamp too old or too new"
    given = [s.removeprefix("v1,") for s in signatures.split() if s.startswith("v1,")]
    for key in keys:
        expected = signature([key], msg_id, timestamp, body).removeprefix("v1,")
        if any(hmac.compare_digest(expected.encode(), g.encode()) for g in given):
            return None
    return "signature mismatch"


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, as it understood it."""

    received_at: datetime
    msg_id: str
    type: str
    seq: int | None
    state: str | None
    kind: str | None
    subject_type: str | None
    subject_id: str | None
    subject_name: str | None
    actor: str | None
    note: str | None
    verified: bool
    problem: str | None = None
    repeat: bool = False

    def line(self) -> str:
        """`12:00:27  webhook  ticket.opened    #2  device chiller-2 (Chiller 2)  open ...`"""
        parts = [f"{self.received_at:%H:%M:%S}  webhook  {self.type:<20}"]
        if self.seq is not None:
            parts.append(f"#{self.seq:<3}")
        if self.subject_id is not None:
            parts.append(f"{self.subject_type} {self.subject_id} ({self.subject_name})")
        if self.state is not None:
            parts.append(self.state)
        if self.actor is not None and self.type != "ticket.opened":
            parts.append(f"by {self.actor}")
        elif self.kind is not None:
            parts.append(self.kind)
        parts.append("signature OK" if self.verified else f"signature BAD: {self.problem}")
        if self.repeat:
            parts.append("(a repeat)")
        line = "  ".join(parts)
        if self.note:
            line += f"\n            > {self.note}"
        return line


def _short(text: Any, limit: int = 130) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    first = text.strip().splitlines()[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_delivery(
    body: bytes, *, msg_id: str, verified: bool, problem: str | None, at: datetime
) -> Delivery:
    """Read what matters from a standard-format body (a body it cannot read is still listed)."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        document = None
    top = _obj(document)
    data = _obj(top.get("data"))
    ticket, event = _obj(data.get("ticket")), _obj(data.get("event"))
    subject, actor = _obj(ticket.get("subject")), _obj(event.get("actor"))
    seq = ticket.get("seq")
    return Delivery(
        received_at=at,
        msg_id=msg_id,
        type=str(top.get("type", "?")),
        seq=seq if isinstance(seq, int) else None,
        state=ticket.get("state"),
        kind=ticket.get("kind"),
        subject_type=subject.get("type"),
        subject_id=subject.get("id"),
        subject_name=subject.get("name"),
        actor=actor.get("name"),
        note=_short(event.get("body") or event.get("comment")),
        verified=verified,
        problem=problem,
    )


class WebhookReceiver:
    """An aiohttp server on loopback taking tocsin's webhooks at `url` (POST /webhook).

    `secret` is the endpoint's ``whsec_...`` secret; `out` gets one line per delivery (None:
    silent). `deliveries` keeps every one, in arrival order.
    """

    def __init__(
        self,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        out: Callable[[str], None] | None = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = (decode_webhook_secret(secret),)
        self.deliveries: list[Delivery] = []
        self._host = host
        self._port = port
        self._out = out
        self._clock = clock
        self._seen: set[str] = set()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the receiver is not started")
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/webhook"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/webhook", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for(self, check: Callable[[list[Delivery]], bool], within: float) -> None:
        """Wait until `check(deliveries)` holds (TimeoutError after `within` seconds)."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: check(self.deliveries))

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        problem = verify(self.keys, headers, body, now=self._clock())
        msg_id = headers.get("webhook-id", "")
        delivery = parse_delivery(
            body,
            msg_id=msg_id,
            verified=problem is None,
            problem=problem,
            at=datetime.fromtimestamp(self._clock()).astimezone(),
        )
        if problem is None:
            if msg_id in self._seen:
                delivery = replace(delivery, repeat=True)
            self._seen.add(msg_id)
        self.deliveries.append(delivery)
        if self._out is not None:
            self._out(delivery.line())
        async with self._arrived:
            self._arrived.notify_all()
        if problem is not None:
            return web.json_response({"error": problem}, status=401)
        return web.Response(status=204)
