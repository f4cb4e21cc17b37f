"""Migration 0002: webhooks deliver what fires after the upgrade, not the history before it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from tocsin.db import migrate
from tocsin.db.engine import open_database

pytestmark = pytest.mark.engines


def test_upgrading_a_database_with_history_starts_the_fan_out_after_it(tmp_path: Path) -> None:
    db = open_database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        with db.write.connect() as conn:
            command.upgrade(migrate._alembic_config(conn), "0001")
            conn.commit()
        with db.write.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tickets (id, org, seq, state, source, kind, subject_type, "
                    "subject_id, subject_name, description, opened_at, updated_at) VALUES "
                    "(1, 'acme', 1, 'open', 'user', 'user_report', 'space', 'l', 'L', '', "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO timeline_events (id, ticket_id, type, at, actor_type, "
                    "actor_name, payload) VALUES (1, 1, 'opened', '2026-01-01 00:00:00', 'user', "
                    "'a', '{}')"
                )
            )
            for trigger_id in (1, 2, 3):
                conn.execute(
                    text(
                        "INSERT INTO triggers (id, org, ticket_id, event_id, type, created_at, "
                        "data) VALUES (:id, 'acme', 1, 1, 'ticket.opened', "
                        "'2026-01-01 00:00:00', '{}')"
                    ),
                    {"id": trigger_id},
                )
        migrate.upgrade_sync(db)
        with db.write.connect() as conn:
            position = conn.execute(text("SELECT position FROM outbox_cursors")).scalar_one()
            assert position == 3
            command.downgrade(migrate._alembic_config(conn), "0001")
            conn.commit()
            tables = {
                row[0]
                for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
            }
        assert not tables & {"deliveries", "webhook_endpoints", "outbox_cursors"}
    finally:
        db.write.dispose()


def test_a_fresh_database_starts_the_fan_out_at_the_beginning(tmp_path: Path) -> None:
    db = open_database(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    try:
        migrate.upgrade_sync(db)
        with db.write.connect() as conn:
            rows = conn.execute(text("SELECT name, position FROM outbox_cursors")).all()
        assert [tuple(r) for r in rows] == [("webhooks", 0)]
    finally:
        db.write.dispose()
