"""Alembic environment: runs on the engine the store hands over (see notifier.migrate).

Daemons starting together against an empty database must migrate it once: the whole
upgrade is one transaction that first takes the database's write lock (SQLite's
BEGIN IMMEDIATE, PostgreSQL's transaction-level advisory lock), so the second daemon
waits, then finds the schema at head and does nothing.
"""

from alembic import context

from notifier.store import metadata

#: pg_advisory_xact_lock key: "bland-notifier migrations"
_MIGRATION_LOCK = 0x626C616E646D6967

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    connection.execution_options(write=True)
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
