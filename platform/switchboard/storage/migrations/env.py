"""Alembic environment: migrations run on the connection that storage.migrate() hands in."""

from alembic import context

from switchboard.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
