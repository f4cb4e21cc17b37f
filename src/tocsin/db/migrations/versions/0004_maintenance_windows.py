"""maintenance windows added at run time (the API and the CLI)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from tocsin.db.schema import Id, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_windows",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=True),
        sa.Column("space_id", sa.String(128), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("start_at", UTCDateTime(), nullable=True),
        sa.Column("end_at", UTCDateTime(), nullable=True),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_maintenance_windows"),
    )
    op.create_index("ix_maintenance_windows_org_id", "maintenance_windows", ["org", "id"])


def downgrade() -> None:
    op.drop_index("ix_maintenance_windows_org_id", table_name="maintenance_windows")
    op.drop_table("maintenance_windows")
