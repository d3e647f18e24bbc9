"""Alembic migrations of the bland-notifier store (installed as ``notifier.migrations``)."""
