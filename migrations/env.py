"""Alembic environment: runs on the engine the store hands over (see notifier.migrate)."""

from alembic import context

from notifier.store import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
