"""Schema migrations through alembic, run on the store's write engine."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from tocsin.db.engine import Database


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "tocsin.db:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def upgrade_sync(db: Database) -> None:
    with db.write.connect() as conn:
        command.upgrade(_alembic_config(conn), "head")
        conn.commit()


async def upgrade(db: Database) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    await asyncio.to_thread(upgrade_sync, db)


def current_revision_sync(db: Database) -> str | None:
    with db.write.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


async def is_current(db: Database) -> bool:
    revision = await asyncio.to_thread(current_revision_sync, db)
    return revision == head_revision()
