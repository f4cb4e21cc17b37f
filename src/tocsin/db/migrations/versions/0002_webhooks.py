"""webhook endpoints' health, one delivery per trigger and endpoint, the fan-out cursor

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from tocsin.db.schema import Id, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("paused_until", UTCDateTime(), nullable=True),
        sa.Column("last_success_at", UTCDateTime(), nullable=True),
        sa.Column("last_failure_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_webhook_endpoints"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("trigger_id", Id, nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("ticket_id", Id, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("msg_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trigger_id"], ["triggers.id"], name="fk_deliveries_trigger_id_triggers"
        ),
        sa.ForeignKeyConstraint(
            ["endpoint"],
            ["webhook_endpoints.name"],
            name="fk_deliveries_endpoint_webhook_endpoints",
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_deliveries_ticket_id_tickets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("msg_id", name="uq_deliveries_msg_id"),
        sa.UniqueConstraint("trigger_id", "endpoint", name="uq_deliveries_trigger_id_endpoint"),
    )
    op.create_index(
        "ix_deliveries_endpoint_status_id",
        "deliveries",
        ["endpoint", "status", "id"],
    )
    op.create_index(
        "ix_deliveries_endpoint_ticket_id_id", "deliveries", ["endpoint", "ticket_id", "id"]
    )
    op.create_index("ix_deliveries_org_status_id", "deliveries", ["org", "status", "id"])
    op.create_table(
        "outbox_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", Id, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_outbox_cursors"),
    )
    # Webhooks deliver the triggers fired from now on, not the history before this upgrade.
    op.execute(
        "INSERT INTO outbox_cursors (name, position) "
        "SELECT 'webhooks', COALESCE(MAX(id), 0) FROM triggers"
    )


def downgrade() -> None:
    op.drop_table("outbox_cursors")
    op.drop_index("ix_deliveries_org_status_id", table_name="deliveries")
    op.drop_index("ix_deliveries_endpoint_ticket_id_id", table_name="deliveries")
    op.drop_index("ix_deliveries_endpoint_status_id", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("webhook_endpoints")
