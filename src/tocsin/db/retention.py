"""Retention: prune resolved tickets (with their timeline, triggers and deliveries) and
delivered webhooks older than configured. Small batches, each its own writer operation, so
pruning a large backlog never holds the write lock for long."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from tocsin.db import schema

BATCH = 500


@dataclass(frozen=True)
class Pruned:
    tickets: int = 0
    deliveries: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.tickets + other.tickets, self.deliveries + other.deliveries)


def prune_tickets(conn: Connection, before: datetime, batch: int = BATCH) -> Pruned:
    """Delete up to `batch` tickets resolved before the cutoff, with everything that refers
    to them (children first: deliveries, triggers, timeline events)."""
    t = schema.tickets
    ids = list(
        conn.execute(
            select(t.c.id)
            .where(t.c.state == "resolved", t.c.resolved_at < before)
            .order_by(t.c.id)
            .limit(batch)
        ).scalars()
    )
    if not ids:
        return Pruned()
    deliveries = conn.execute(
        delete(schema.deliveries).where(schema.deliveries.c.ticket_id.in_(ids))
    ).rowcount
    conn.execute(delete(schema.triggers).where(schema.triggers.c.ticket_id.in_(ids)))
    conn.execute(delete(schema.timeline_events).where(schema.timeline_events.c.ticket_id.in_(ids)))
    conn.execute(delete(t).where(t.c.id.in_(ids)))
    return Pruned(tickets=len(ids), deliveries=deliveries)


def prune_deliveries(conn: Connection, before: datetime, batch: int = BATCH) -> Pruned:
    """Delete up to `batch` deliveries that succeeded before the cutoff."""
    d = schema.deliveries
    ids = list(
        conn.execute(
            select(d.c.id)
            .where(d.c.status == "delivered", d.c.delivered_at < before)
            .order_by(d.c.id)
            .limit(batch)
        ).scalars()
    )
    if ids:
        conn.execute(delete(d).where(d.c.id.in_(ids)))
    return Pruned(deliveries=len(ids))
