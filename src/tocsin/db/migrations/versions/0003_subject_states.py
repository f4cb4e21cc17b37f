"""the health tracker's persisted state per subject

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from tocsin.db.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_states",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("flapping", sa.Boolean(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=True),
        sa.Column("ticket_seq", sa.Integer(), nullable=True),
        sa.Column("last_result", sa.JSON(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org", "subject_type", "subject_id", name="pk_subject_states"),
    )


def downgrade() -> None:
    op.drop_table("subject_states")
