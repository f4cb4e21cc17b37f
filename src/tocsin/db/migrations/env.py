"""Alembic's entry point: tocsin always hands it a live connection (see tocsin.db.migrate)."""

from alembic import context

from tocsin.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
