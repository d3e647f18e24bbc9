"""several sources and the leadership lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The single source's state moves from ``meta`` to a ``sources`` row named
``default`` (keeping its instance, so event ids continue unchanged), calls, events
and polls gain a ``source`` column, and the ``leader`` row is created.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STATE_KEYS = ("instance", "next_seq", "source", "timers")


def upgrade() -> None:
    bind = op.get_bind()
    sources = op.create_table(
        "sources",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("instance", sa.String(), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("timers", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    leader = op.create_table(
        "leader",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.Column("since", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(leader, [{"id": 1, "term": 0, "expires_at": 0.0}])

    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.LargeBinary()))
    values = {row.key: bytes(row.value) for row in bind.execute(sa.select(meta.c.key, meta.c.value))}
    if "instance" in values:
        op.bulk_insert(
            sources,
            [
                {
                    "name": "default",
                    "instance": values["instance"].decode(),
                    "next_seq": int(values.get("next_seq", b"1")),
                    "state": values.get("source", b"{}"),
                    "timers": values.get("timers", b"[0.0,0.0,0.0]"),
                }
            ],
        )
    op.execute(meta.delete().where(meta.c.key.in_(_STATE_KEYS)))

    # The primary key becomes (source, call_id): a new table, the rows copied over.
    op.create_table(
        "calls_new",
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("source", "call_id", name="pk_calls"),
    )
    op.execute(
        "INSERT INTO calls_new (source, call_id, status, state) SELECT 'default', call_id, status, state FROM calls"
    )
    op.drop_table("calls")
    op.rename_table("calls_new", "calls")

    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(), nullable=False, server_default="default"))
    with op.batch_alter_table("polls") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(), nullable=False, server_default="default"))


def downgrade() -> None:
    with op.batch_alter_table("polls") as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("source")
    op.create_table(
        "calls_old",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("call_id"),
    )
    op.execute(
        "INSERT INTO calls_old (call_id, status, state) SELECT call_id, status, state FROM calls WHERE source = 'default'"
    )
    op.drop_table("calls")
    op.rename_table("calls_old", "calls")
    bind = op.get_bind()
    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.LargeBinary()))
    row = bind.execute(sa.text("SELECT instance, next_seq, state, timers FROM sources WHERE name = 'default'")).first()
    if row is not None:
        op.bulk_insert(
            meta,
            [
                {"key": "instance", "value": row.instance.encode()},
                {"key": "next_seq", "value": str(row.next_seq).encode()},
                {"key": "source", "value": bytes(row.state)},
                {"key": "timers", "value": bytes(row.timers)},
            ],
        )
    op.drop_table("leader")
    op.drop_table("sources")
