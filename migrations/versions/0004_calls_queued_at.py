"""when each active call was queued, for the console's "oldest queued first"

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Calls gain ``queued_at`` (Bland's ``created_at`` when plausible, else the first sighting)
and an index on (status, queued_at, call_id): a page of the oldest queued calls is read
from the index at any number of calls, without decoding every call's state. Rows from
before this revision are filled in by the next poll that changes them. A second index,
on (source, status), makes the counts by status (``status``, the console's every
refresh) a scan of that small index rather than of every call's row.
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
    op.create_index("ix_calls_oldest", "calls", ["status", "queued_at", "call_id"])
    op.create_index("ix_calls_status", "calls", ["source", "status"])


def downgrade() -> None:
    op.drop_index("ix_calls_status", table_name="calls")
    op.drop_index("ix_calls_oldest", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("queued_at")
