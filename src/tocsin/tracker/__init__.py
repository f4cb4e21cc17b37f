"""The health tracker: a pure state machine from probe observations to ticket decisions.

`step(state, event, now, windows) -> (state, decisions)`, one subject at a time, by the
product's tracker table (TRACKER.md). No asyncio, no I/O, no clock reads: the wiring passes
`now`, applies the decisions to the ticket store, and saves `dump(state, now)` beside the tickets.
"""

from tocsin.tracker.events import (
    Comment,
    Covered,
    Decision,
    Event,
    Note,
    Observed,
    OpenTicket,
    ParentChanged,
    Reason,
    ReopenTicket,
    ResolveTicket,
    Tick,
    TicketDecision,
    TicketOpened,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
    ticket_decisions,
)
from tocsin.tracker.persist import dump, load
from tocsin.tracker.rules import next_tick, step
from tocsin.tracker.state import (
    MonitorTicket,
    Nature,
    Now,
    ProbeResult,
    SubjectHealth,
    SubjectState,
    Windows,
    adopt_open_ticket,
    initial,
)

__all__ = [
    "Comment",
    "Covered",
    "Decision",
    "Event",
    "MonitorTicket",
    "Nature",
    "Note",
    "Now",
    "Observed",
    "OpenTicket",
    "ParentChanged",
    "ProbeResult",
    "Reason",
    "ReopenTicket",
    "ResolveTicket",
    "SubjectHealth",
    "SubjectState",
    "Tick",
    "TicketDecision",
    "TicketOpened",
    "TicketReopenedByPerson",
    "TicketResolvedByPerson",
    "TicketStartedByPerson",
    "Windows",
    "adopt_open_ticket",
    "dump",
    "initial",
    "load",
    "next_tick",
    "step",
    "ticket_decisions",
]
