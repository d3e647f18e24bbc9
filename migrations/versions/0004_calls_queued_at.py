"""when each active call was queued, for the console's "oldest queued first"

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Calls gain ``queued_at`` (Bland's ``created_at`` when plausible, else the first sighting)
and an index on (source, status, queued_at): a page of the oldest queued calls is read
in order from the index at any number of calls, and the counts by status (``status``,
each console refresh) are a scan of the index rather than of every call's row. One
index, not one per query: each is paid for on every changed call of every poll. Rows
from before this revision are filled in by the next poll that changes them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("queued_at", sa.Float(), nullable=True))
    op.create_index("ix_calls_oldest", "calls", ["source", "status", "queued_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_oldest", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("queued_at")
