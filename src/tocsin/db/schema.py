"""Tables, in portable SQL (SQLite now, PostgreSQL later). Alembic migrations create them;
this metadata is what the code queries and what a test checks the migrations against."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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

# -- webhook delivery (migration 0002) -----------------------------------------------------------

# One row per configured webhook endpoint (created when the delivery worker starts): its health,
# whether it is disabled, and the endpoint-wide backoff while it fails.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime, nullable=True),
    Column("disabled_reason", String(200), nullable=True),
    Column("failing_since", UTCDateTime, nullable=True),
    Column("consecutive_failures", Integer, nullable=False),
    Column("paused_until", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("last_failure_at", UTCDateTime, nullable=True),
    Column("last_error", String(500), nullable=True),
)

# One row per (trigger, subscribed endpoint): all delivery state lives here, none in memory.
# status: pending -> delivering (claimed, leased until claimed_until) -> delivered | failed,
# or back to pending with a later next_attempt_at. msg_id is the webhook-id, stable on retries.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("trigger_id", Id, ForeignKey("triggers.id"), nullable=False),
    Column("endpoint", String(64), ForeignKey("webhook_endpoints.name"), nullable=False),
    Column("org", String(64), nullable=False),
    Column("ticket_id", Id, ForeignKey("tickets.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("msg_id", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_until", UTCDateTime, nullable=True),
    Column("claim_token", String(32), nullable=True),  # which claim won it (see outbox.claim)
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    UniqueConstraint("trigger_id", "endpoint"),
    Index("ix_deliveries_endpoint_status_id", "endpoint", "status", "id"),
    Index("ix_deliveries_endpoint_ticket_id_id", "endpoint", "ticket_id", "id"),
    Index("ix_deliveries_org_status_id", "org", "status", "id"),
)

# How far a consumer of the triggers outbox has read (name "webhooks": the fan-out).
outbox_cursors = Table(
    "outbox_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", Id, nullable=False),
)

# -- health monitor (migration 0003) -------------------------------------------------------------

# The tracker's state per subject, persisted beside the tickets so a restart loses no window:
# `state` is the tracker's own JSON (wall-clock UTC times); the other columns are for readers
# (the subjects API, `tocsin subjects`) that must not parse it.
subject_states = Table(
    "subject_states",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("subject_type", String(16), primary_key=True),
    Column("subject_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("health", String(16), nullable=False),
    Column("flapping", Boolean, nullable=False),
    Column("since", UTCDateTime, nullable=True),
    Column("ticket_seq", Integer, nullable=True),
    Column("last_result", JSON, nullable=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)


maintenance_windows = Table(
    "maintenance_windows",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("subject_id", String(128), nullable=True),
    Column("space_id", String(128), nullable=True),
    Column("labels", JSON, nullable=True),
    Column("start_at", UTCDateTime, nullable=True),
    Column("end_at", UTCDateTime, nullable=True),
    Column("cron", String(200), nullable=True),
    Column("duration_seconds", Integer, nullable=True),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(200), nullable=True),
    Index("ix_maintenance_windows_org_id", "org", "id"),
)

# -- web sessions (migration 0005) ---------------------------------------------------------------

# A signed-in browser: the cookie holds a random id, the table only its SHA-256 (a copy of the
# database signs nobody in). Kept here so sessions survive a restart; expired rows are pruned.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("org", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("via", String(16), nullable=False),  # token | user: how the person signed in
    # SHA-256 of the credential it was opened with: a new token secret or password ends it.
    Column("credential", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_web_sessions_expires_at", "expires_at"),
)
