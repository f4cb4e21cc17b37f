"""Whether a failing endpoint needs a ticket: a pure decision, each with a named reason.

The worker reads the endpoint's health and its newest webhook_endpoint_failing ticket in each
org it serves, asks `decide`, and applies the answer through the ticket store as the health
monitor. Same product rules as for devices: a ticket once failing lasts `ticket_after` (or at
once when the endpoint is disabled), one ticket at a time, reopened inside the reopen window,
resolved when a delivery succeeds again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from tocsin.delivery.ops import EndpointHealth, TicketMark
from tocsin.tickets.model import State, rfc3339


class Reason(StrEnum):
    OPEN = "OPEN"
    REOPEN_IN_WINDOW = "REOPEN_IN_WINDOW"
    AUTO_RESOLVE = "AUTO_RESOLVE"
    DISABLED_NOTE = "DISABLED_NOTE"  # a comment on the open ticket: the endpoint was disabled


@dataclass(frozen=True)
class Decision:
    reason: Reason
    org: str
    endpoint: str
    seq: int | None  # the ticket to reopen or resolve
    text: str  # the new ticket's description, or the timeline comment


def decide(
    org: str,
    health: EndpointHealth,
    ticket: TicketMark | None,
    now: datetime,
    *,
    ticket_after: timedelta,
    reopen_window: timedelta,
    just_disabled: bool = False,
    recovered: bool = True,
) -> Decision | None:
    """What to do about the endpoint's ticket in `org`. `recovered`: the endpoint has just come
    back (or this is the first look since start); a ticket a person reopened while the endpoint
    was healthy is theirs, and is not resolved under them."""
    name = health.name
    unresolved = ticket is not None and ticket.state != State.RESOLVED.value
    since = health.failing_since
    if since is None:
        if unresolved and ticket is not None and recovered:
            text = f"Deliveries to webhook {name} succeed again."
            return Decision(Reason.AUTO_RESOLVE, org, name, ticket.seq, text)
        return None
    if unresolved and ticket is not None:
        if just_disabled:
            text = disabled_text(name, health.disabled_reason)
            return Decision(Reason.DISABLED_NOTE, org, name, ticket.seq, text)
        return None
    if now - since < ticket_after and health.disabled_at is None:
        return None
    text = failing_text(health)
    resolved_at = ticket.resolved_at if ticket is not None else None
    if ticket is not None and resolved_at is not None:
        ago = now - resolved_at
        if ago < ticket_after:
            return None  # a person resolved it moments ago: give them the debounce
        if ago < reopen_window:
            return Decision(Reason.REOPEN_IN_WINDOW, org, name, ticket.seq, text)
    return Decision(Reason.OPEN, org, name, None, text)


def failing_text(health: EndpointHealth) -> str:
    since = rfc3339(health.failing_since) if health.failing_since else "now"
    text = f"Deliveries to webhook {health.name} have failed since {since}"
    text += f" ({health.last_error})." if health.last_error else "."
    if health.disabled_at is not None:
        text += f"\n\n{disabled_text(health.name, health.disabled_reason)}"
    return text


def disabled_text(name: str, reason: str | None) -> str:
    return (
        f"Webhook {name} is disabled ({reason or 'by the delivery worker'}). Its backlog is "
        f"kept: `tocsin webhooks enable {name}` delivers it once the receiver is fixed."
    )
