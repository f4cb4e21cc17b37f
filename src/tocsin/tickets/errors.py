"""What can go wrong with a ticket operation, in words the API and the CLI pass on as they are.
Each error is raised before anything is written."""

from __future__ import annotations

from tocsin.tickets.transitions import IllegalTransition

__all__ = ["DedupConflict", "IllegalTransition", "InvalidTicket", "TicketError", "TicketNotFound"]


class TicketError(Exception):
    """Base for errors about a ticket request."""


class TicketNotFound(TicketError):
    def __init__(self, org: str, seq: int) -> None:
        self.org = org
        self.seq = seq
        super().__init__(f"no ticket #{seq} in org {org!r}")


class InvalidTicket(TicketError):
    """A value the request gave is not acceptable; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class DedupConflict(TicketError):
    """Reopening would make two unresolved tickets share one dedup_key."""

    def __init__(self, dedup_key: str, other_seq: int) -> None:
        self.dedup_key = dedup_key
        self.other_seq = other_seq
        super().__init__(f"ticket #{other_seq} is already unresolved with dedup_key {dedup_key!r}")
