"""tickets, their timeline, per-org sequences and the trigger outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from tocsin.db.schema import Id, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UNRESOLVED_DEDUP = sa.text("dedup_key IS NOT NULL AND state != 'resolved'")


def upgrade() -> None:
    op.create_table(
        "org_sequences",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("org", name="pk_org_sequences"),
    )
    op.create_table(
        "tickets",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("subject_name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=True),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
        sa.UniqueConstraint("org", "seq", name="uq_tickets_org_seq"),
    )
    op.create_index("ix_tickets_org_state_seq", "tickets", ["org", "state", "seq"])
    op.create_index(
        "ix_tickets_org_subject", "tickets", ["org", "subject_type", "subject_id", "state"]
    )
    op.create_index(
        "ux_tickets_org_dedup_key_unresolved",
        "tickets",
        ["org", "dedup_key"],
        unique=True,
        sqlite_where=UNRESOLVED_DEDUP,
        postgresql_where=UNRESOLVED_DEDUP,
    )
    op.create_table(
        "timeline_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("ticket_id", Id, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_timeline_events_ticket_id_tickets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_timeline_events"),
    )
    op.create_index("ix_timeline_events_ticket_id_id", "timeline_events", ["ticket_id", "id"])
    op.create_table(
        "triggers",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("ticket_id", Id, nullable=False),
        sa.Column("event_id", Id, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_triggers_ticket_id_tickets"
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["timeline_events.id"], name="fk_triggers_event_id_timeline_events"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_triggers"),
    )


def downgrade() -> None:
    op.drop_table("triggers")
    op.drop_index("ix_timeline_events_ticket_id_id", table_name="timeline_events")
    op.drop_table("timeline_events")
    op.drop_index("ux_tickets_org_dedup_key_unresolved", table_name="tickets")
    op.drop_index("ix_tickets_org_subject", table_name="tickets")
    op.drop_index("ix_tickets_org_state_seq", table_name="tickets")
    op.drop_table("tickets")
    op.drop_table("org_sequences")
