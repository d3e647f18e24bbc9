"""The tables, as SQLAlchemy metadata: one description both backends and Alembic share.

Every migration in ``migrations/`` must end at this shape (``tests/test_migrations.py``
compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
#: One row per Bland organisation: its detection state between polls.
sources = Table(
    "sources",
    metadata,
    Column("name", String, primary_key=True),
    Column("instance", String, nullable=False),  # random per source and store: unique event ids
    Column("next_seq", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),  # JSON SourceState
    Column("timers", LargeBinary, nullable=False),  # JSON [stuck, repeat, long_running]
    Column("conditions", LargeBinary),  # JSON ConditionState (null: none yet)
)
#: The leadership lease: one row, owned by ``notifier.lease``.
leader = Table(
    "leader",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("holder", String),
    Column("host", String),
    Column("pid", Integer),
    Column("term", Integer, nullable=False),
    Column("since", Float),
    Column("expires_at", Float, nullable=False),
)
calls = Table(
    "calls",
    metadata,
    Column("source", String, nullable=False),
    Column("call_id", String, nullable=False),
    Column("status", String, nullable=False),
    Column("state", LargeBinary, nullable=False),  # msgpack-encoded CallState
    Column("queued_at", Float),  # detect.queued_since: the console lists the oldest first
    PrimaryKeyConstraint("source", "call_id", name="pk_calls"),
    Index("ix_calls_oldest", "source", "status", "queued_at"),  # also the counts by status
)
events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String, nullable=False, unique=True),
    Column("type", String, nullable=False),
    Column("call_id", String),
    Column("detected_at", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),  # JSON
    Column("source", String, nullable=False, server_default="default"),
    Index("ix_events_detected_at", "detected_at"),
    Index("ix_events_call_id", "call_id"),
    Index("ix_events_type", "type"),
)
polls = Table(
    "polls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("duration", Float, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("calls", Integer),
    Column("skipped", Integer),
    Column("events", Integer, nullable=False),
    Column("error", Text),
    Column("source", String, nullable=False, server_default="default"),
)
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("event_count", Integer, nullable=False, default=1),  # > 1: a digest
    Column("target", String, nullable=False),
    Column("rule", String, nullable=False),
    Column("status", String, nullable=False),  # pending | sent | dead | silenced | muted | inhibited
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("first_attempt_at", Float),
    Column("finished_at", Float),
    Column("last_error", Text),
    # What quieted it: a silence id, a time interval's name (pending: held until it ends).
    Column("quieted_by", String),
    Index("ix_deliveries_due", "status", "target", "next_attempt_at"),
    Index("ix_deliveries_event", "event_id"),
)
# The events of a digest (``event_count`` > 1). A single-event delivery, the common
# case, needs no rows here: its ``event_id`` says it all, and a poll writes a third
# fewer rows. (Older databases also link single events; no read needs those rows.)
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("delivery_id", Integer, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("event_id", String, ForeignKey("events.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_delivery_events_event", "event_id"),
)
attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", Integer, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("outcome", String, nullable=False),  # sent | failed | dead
    Column("status_code", Integer),
    Column("error", Text),
    Column("latency", Float, nullable=False),
    Index("ix_attempts_delivery", "delivery_id"),
)
#: Silences (``notifier silence``): shared by every daemon on the store.
silences = Table(
    "silences",
    metadata,
    Column("id", String, primary_key=True),
    Column("matchers", LargeBinary, nullable=False),  # JSON list of matcher strings, as written
    Column("starts_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    Column("comment", Text, nullable=False),
    Column("author", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_silences_ends_at", "ends_at"),
)
