"""silences, what quieted a delivery, and condition state

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Deliveries gain ``quieted_by`` (the silence id or time interval behind a ``silenced``,
``muted`` or ``inhibited`` delivery, or the interval holding a deferred one), and the
``silences`` table is created. Sources gain ``conditions``: the state of the campaign
health conditions, committed with each poll.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("quieted_by", sa.String(), nullable=True))
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("conditions", sa.LargeBinary(), nullable=True))
    op.create_table(
        "silences",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("matchers", sa.LargeBinary(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])


def downgrade() -> None:
    op.drop_index("ix_silences_ends_at", table_name="silences")
    op.drop_table("silences")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("quieted_by")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("conditions")
