"""``notifier db copy --to URL``: move a store to another backend (SQLite to PostgreSQL,
or back), every row as it is, so that event ids, the outbox and each source's state
carry on where they stopped."""

from __future__ import annotations

from sqlalchemy import func, insert, select, text, update

from notifier.store import Store, StoreError
from notifier.store.schema import leader, metadata

CHUNK = 5000
#: Integer keys the database numbers itself: PostgreSQL's sequences must start past the copied rows.
_SERIAL = {"events": "seq", "polls": "id", "deliveries": "id", "attempts": "id"}


def ensure_quiet(source: Store) -> None:
    """No daemon may be leading on the source: it would keep writing during the copy."""
    from notifier.lease import read_leader

    info = read_leader(source)
    if info is not None and info.held:
        raise StoreError(f"{info.describe()} leads on {source.description}: stop every daemon before copying")


def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy every table; returns rows copied per table. The target must be migrated and
    hold nothing yet, and no daemon may be leading on the source."""
    ensure_quiet(source)
    with target.engine.connect() as conn:
        held = {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}
    if any(count for name, count in held.items() if name != "leader"):
        raise StoreError(f"{target.description} already holds data; copy into a new, empty database")
    copied: dict[str, int] = {}
    with source.engine.connect() as src, target.transaction() as dst:
        for table in metadata.sorted_tables:
            if table is leader:
                continue
            copied[table.name] = 0
            result = src.execution_options(yield_per=CHUNK).execute(select(table))
            for rows in result.mappings().partitions(CHUNK):
                dst.execute(insert(table), [dict(row) for row in rows])
                copied[table.name] += len(rows)
        term = src.execute(select(leader.c.term)).scalar() or 0
        # Terms keep growing across the move: a fence taken before it can never match after.
        dst.execute(update(leader).values(holder=None, host=None, pid=None, term=term, expires_at=0.0))
        if target.dialect == "postgresql":
            for name, column in _SERIAL.items():
                dst.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "
                        f"coalesce((SELECT max({column}) FROM {name}), 0) + 1, false)"
                    )
                )
    return copied
