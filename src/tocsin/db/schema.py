"""Tables, in portable SQL (SQLite now, PostgreSQL later). Alembic migrations create them;
this metadata is what the code queries and what a test checks the migrations against."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

# BIGINT on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# The last sequence number given out per org; incremented in the transaction that opens.
org_sequences = Table(
    "org_sequences",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("last_seq", Integer, nullable=False),
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject_type", String(16), nullable=False),
    Column("subject_id", String(128), nullable=False),
    Column("subject_name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("dedup_key", String(255), nullable=True),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime, nullable=True),
    UniqueConstraint("org", "seq"),
    Index("ix_tickets_org_state_seq", "org", "state", "seq"),
    Index("ix_tickets_org_subject", "org", "subject_type", "subject_id", "state"),
    # One unresolved ticket per dedup_key: the database says so, not only the code.
    Index(
        "ux_tickets_org_dedup_key_unresolved",
        "org",
        "dedup_key",
        unique=True,
        sqlite_where=text("dedup_key IS NOT NULL AND state != 'resolved'"),
        postgresql_where=text("dedup_key IS NOT NULL AND state != 'resolved'"),
    ),
)

timeline_events = Table(
    "timeline_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ticket_id", Id, ForeignKey("tickets.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor_type", String(16), nullable=False),
    Column("actor_name", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Index("ix_timeline_events_ticket_id_id", "ticket_id", "id"),
)

# The outbox: one row per trigger, written in the transaction of the change that fired it.
# `data` is the snapshot a webhook carries: the ticket as it was then and the timeline event.
triggers = Table(
    "triggers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("ticket_id", Id, ForeignKey("tickets.id"), nullable=False),
    Column("event_id", Id, ForeignKey("timeline_events.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
)
