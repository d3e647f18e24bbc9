"""The SQLite store: current calls, events, the poll log and the delivery outbox.

One transaction per poll holds the new detection state, its events and the
deliveries they cause, so a crash at any instant either keeps all of a poll or none
of it: nothing is lost and, after a restart, nothing is announced twice.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url

from notifier.detect import DetectState, Transition
from notifier.model import CallState, Event, SourceState
from notifier.route import PlannedDelivery

POLL_LOG_KEEP = 1000
#: Seconds a writer waits for another writer's lock (the daemon vs a CLI command).
BUSY_TIMEOUT = 30
WRITE_CHUNK = 5000

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
calls = Table(
    "calls",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("status", String, nullable=False),
    Column("state", LargeBinary, nullable=False),  # msgpack-encoded CallState
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
)
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("event_count", Integer, nullable=False, default=1),  # > 1: a digest
    Column("target", String, nullable=False),
    Column("rule", String, nullable=False),
    Column("status", String, nullable=False),  # pending | sent | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("first_attempt_at", Float),
    Column("finished_at", Float),
    Column("last_error", Text),
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

_call_state_encoder = msgspec.msgpack.Encoder()
_call_state_decoder = msgspec.msgpack.Decoder(CallState)
_json = msgspec.json.Encoder()
_source_decoder = msgspec.json.Decoder(SourceState)


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to do."""


def database_path(url: str, env: dict[str, str] | None = None) -> Path:
    """The file behind a ``sqlite:///`` URL; relative paths go to $STATE_DIRECTORY or cwd."""
    env = dict(os.environ) if env is None else env
    database = make_url(url).database
    if not database or database == ":memory:":
        raise StoreError(f"storage.url {url!r} names no database file")
    path = Path(database)
    if not path.is_absolute():
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        path = Path(state_dir or os.getcwd()) / path
    return path


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does; its -wal/-shm inherit the mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _make_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Checkpoints copy the WAL back into the database: that work is kept off the
        # poll path and done by ``checkpoint()`` on a timer (closing the last
        # connection checkpoints too).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front (IMMEDIATE): two writers (the daemon and a CLI
        # command) then wait on busy_timeout instead of failing mid-transaction.
        # Readers stay deferred and never block the daemon.
        options = conn.get_execution_options()
        if options.get("write"):
            # Polls (events, their deliveries) are fsynced; attempt bookkeeping is not,
            # since losing the last attempts to a power cut only means a resend.
            conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if options.get('durable', True) else 'NORMAL'}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str  # the first (or only) event
    event_count: int
    target: str
    rule: str
    status: str  # pending | sent | dead
    attempts: int
    created_at: float
    next_attempt_at: float
    first_attempt_at: float | None
    finished_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptRecord:
    at: float
    outcome: str  # sent | failed | dead
    status_code: int | None
    error: str | None
    latency: float
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class PollRecord:
    at: float
    duration: float
    ok: bool
    calls: int | None = None
    skipped: int | None = None
    error: str | None = None


class Store:
    """Thin shell around SQLite: every method is one short transaction."""

    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.path = database_path(url, env)
        try:
            _create_private(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create database {self.path}: {exc.strerror}") from None
        self.engine = _make_engine(self.path)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Connection]:
        """A write transaction: committed on exit, rolled back on any exception."""
        with self.engine.connect() as conn:
            conn.execution_options(write=True, durable=durable)
            with conn.begin():
                yield conn

    # -- schema ---------------------------------------------------------------------

    def upgrade(self) -> None:
        """Apply the Alembic migrations shipped inside the package."""
        from notifier.migrate import upgrade

        upgrade(self.engine)

    # -- detection state ----------------------------------------------------------------

    def load_state(self) -> DetectState:
        with self.transaction() as conn:
            values = {row.key: row.value for row in conn.execute(select(meta))}
            if "instance" not in values:
                instance = secrets.token_hex(6)
                conn.execute(insert(meta).values(key="instance", value=instance.encode()))
                values["instance"] = instance.encode()
            # Order does not matter: detection orders what it emits by itself.
            loaded = {
                row.call_id: _call_state_decoder.decode(row.state)
                for row in conn.execute(select(calls.c.call_id, calls.c.state))
            }
        return DetectState(
            instance=values["instance"].decode(),
            calls=loaded,
            source=_source_decoder.decode(values["source"]) if "source" in values else SourceState(),
            next_seq=int(values.get("next_seq", b"1")),
            timers=tuple(msgspec.json.decode(values["timers"])) if "timers" in values else (0.0, 0.0, 0.0),
        )

    def commit_poll(self, transition: Transition, planned: Sequence[PlannedDelivery], poll: PollRecord) -> None:
        """Persist one poll whole: state, events, their deliveries and the poll log.

        A poll with events is fsynced before anything is sent. One without events
        is not: a power cut can only roll it back to a state the next poll reaches
        again (no event id was handed out), and a steady daemon then costs no fsync.
        """
        state = transition.state
        with self.transaction(durable=bool(transition.events)) as conn:
            # The hot path of a poll: plain DB-API executemany, no per-row SQL building.
            for start in range(0, len(transition.changed), WRITE_CHUNK):  # bounded memory on a first poll
                conn.exec_driver_sql(
                    "INSERT INTO calls (call_id, status, state) VALUES (?, ?, ?) "
                    "ON CONFLICT (call_id) DO UPDATE SET status = excluded.status, state = excluded.state",
                    [
                        (cs.call.call_id, cs.call.status, _call_state_encoder.encode(cs))
                        for cs in transition.changed[start : start + WRITE_CHUNK]
                    ],
                )
            if transition.removed:
                conn.exec_driver_sql("DELETE FROM calls WHERE call_id = ?", [(cid,) for cid in transition.removed])
            if transition.events:
                conn.exec_driver_sql(
                    "INSERT INTO events (id, type, call_id, detected_at, data) VALUES (?, ?, ?, ?, ?)",
                    [(e.id, e.type, e.call_id, e.detected_at, _json.encode(e.data)) for e in transition.events],
                )
            if planned:
                self._insert_deliveries(conn, planned, poll.at)
            conn.exec_driver_sql(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [
                    ("source", _json.encode(state.source)),
                    ("next_seq", str(state.next_seq).encode()),
                    ("timers", _json.encode(state.timers)),
                ],
            )
            result = conn.exec_driver_sql(
                "INSERT INTO polls (at, duration, ok, calls, skipped, events, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (poll.at, poll.duration, poll.ok, poll.calls, poll.skipped, len(transition.events), poll.error),
            )
            poll_id = result.lastrowid
            if poll_id % 100 == 0:
                conn.execute(delete(polls).where(polls.c.id <= poll_id - POLL_LOG_KEEP))

    def _insert_deliveries(self, conn: Connection, planned: Sequence[PlannedDelivery], now: float) -> None:
        # Ids are assigned here (the write lock is held) so that both tables take one
        # executemany each, however many deliveries a burst of events causes.
        first = conn.exec_driver_sql("SELECT coalesce(max(id), 0) + 1 FROM deliveries").scalar_one()
        rows: list[tuple[object, ...]] = []
        links: list[tuple[int, str]] = []
        for offset, plan in enumerate(planned):
            delivery_id = first + offset
            rows.append((delivery_id, plan.event_ids[0], len(plan.event_ids), plan.target, plan.rule, now, now))
            if len(plan.event_ids) > 1:
                links.extend((delivery_id, event_id) for event_id in plan.event_ids)
        conn.exec_driver_sql(
            "INSERT INTO deliveries (id, event_id, event_count, target, rule, status, attempts, created_at, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
            rows,
        )
        if links:
            conn.exec_driver_sql("INSERT INTO delivery_events (delivery_id, event_id) VALUES (?, ?)", links)

    # -- queries for the CLI ------------------------------------------------------------

    def events(
        self,
        *,
        since: float | None = None,
        types: Sequence[str] = (),
        call_id: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Recorded events, oldest first (the newest ``limit`` when given)."""
        query = select(events).order_by(events.c.seq.desc())
        if since is not None:
            query = query.where(events.c.detected_at >= since)
        if types:
            query = query.where(events.c.type.in_(list(types)))
        if call_id:
            query = query.where(events.c.call_id == call_id)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_row_event(row) for row in reversed(rows)]

    # -- the outbox ---------------------------------------------------------------------

    def due_deliveries(self, target: str, now: float, limit: int = 50) -> list[tuple[Delivery, list[Event]]]:
        """Pending deliveries of one target that are due, in event order, with their events."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries)
                .where(
                    deliveries.c.status == "pending", deliveries.c.target == target, deliveries.c.next_attempt_at <= now
                )
                .order_by(deliveries.c.id)
                .limit(limit)
            ).all()
            if not rows:
                return []
            singles = [r.id for r in rows if r.event_count == 1]
            digests = [r.id for r in rows if r.event_count != 1]
            found: list[Any] = []
            if singles:
                found += conn.execute(
                    select(deliveries.c.id.label("delivery_id"), events)
                    .join(events, events.c.id == deliveries.c.event_id)
                    .where(deliveries.c.id.in_(singles))
                ).all()
            if digests:
                found += conn.execute(
                    select(delivery_events.c.delivery_id, events)
                    .join(events, events.c.id == delivery_events.c.event_id)
                    .where(delivery_events.c.delivery_id.in_(digests))
                    .order_by(events.c.seq)
                ).all()
        by_delivery: dict[int, list[Event]] = {}
        for row in found:
            by_delivery.setdefault(row.delivery_id, []).append(_row_event(row))
        return [(_row_delivery(r), by_delivery.get(r.id, [])) for r in rows]

    def next_due(self, target: str) -> float | None:
        """When the earliest pending delivery of ``target`` becomes due (None: nothing pending)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.status == "pending", deliveries.c.target == target
                )
            ).scalar()

    def record_attempt(self, delivery: Delivery, attempt: AttemptRecord) -> None:
        """One attempt and the delivery's new status, in one transaction."""
        failed = attempt.outcome == "failed"
        with self.transaction(durable=False) as conn:
            # Fixed SQL: this runs once per message sent, hundreds of times a second in a burst.
            conn.exec_driver_sql(
                "INSERT INTO attempts (delivery_id, at, outcome, status_code, error, latency) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (delivery.id, attempt.at, attempt.outcome, attempt.status_code, attempt.error, attempt.latency),
            )
            conn.exec_driver_sql(
                "UPDATE deliveries SET attempts = attempts + 1, status = ?, last_error = ?, "
                "first_attempt_at = coalesce(first_attempt_at, ?), "
                "next_attempt_at = coalesce(?, next_attempt_at), finished_at = ? WHERE id = ?",
                (
                    "pending" if failed else attempt.outcome,  # sent | dead
                    attempt.error,
                    attempt.at,
                    attempt.next_attempt_at if failed else None,
                    None if failed else attempt.at,
                    delivery.id,
                ),
            )

    def deliveries(self, status: str | None = None, limit: int | None = None) -> list[Delivery]:
        query = select(deliveries).order_by(deliveries.c.id.desc())
        if status:
            query = query.where(deliveries.c.status == status)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_row_delivery(r) for r in reversed(conn.execute(query).all())]

    def attempts_of(self, delivery_ids: Sequence[int]) -> dict[int, list[AttemptRecord]]:
        """Each delivery's attempts, oldest first: one query per 500 deliveries, not per delivery."""
        found: dict[int, list[AttemptRecord]] = {delivery_id: [] for delivery_id in delivery_ids}
        ids = list(found)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # well under SQLite's limit on bound values
                rows = conn.execute(
                    select(attempts).where(attempts.c.delivery_id.in_(ids[start : start + 500])).order_by(attempts.c.id)
                )
                for r in rows:
                    found[r.delivery_id].append(AttemptRecord(r.at, r.outcome, r.status_code, r.error, r.latency))
        return found

    def redeliver(self, now: float, *, event_id: str | None = None) -> int:
        """Re-queue dead deliveries (of one event, or all); returns how many."""
        query = update(deliveries).where(deliveries.c.status == "dead")
        if event_id is not None:
            linked = select(delivery_events.c.delivery_id).where(delivery_events.c.event_id == event_id)
            query = query.where(or_(deliveries.c.event_id == event_id, deliveries.c.id.in_(linked)))
        with self.transaction() as conn:
            result = conn.execute(
                query.values(
                    status="pending",
                    next_attempt_at=now,
                    first_attempt_at=None,
                    finished_at=None,
                )
            )
        return result.rowcount

    def queue_stats(self) -> tuple[int, float | None]:
        """(pending deliveries, created_at of the oldest one)."""
        with self.engine.connect() as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(deliveries.c.created_at)).where(deliveries.c.status == "pending")
            ).one()
        return int(depth), oldest

    def prune(self, before: float, batch: int = 500) -> int:
        """Delete one small batch of finished deliveries and of events older than ``before``
        (never an event a pending delivery still needs). Returns rows deleted; call again
        until it returns 0, so that no single transaction holds the lock for long."""
        finished = (
            select(deliveries.c.id)
            .where(
                deliveries.c.status.in_(("sent", "dead")),
                func.coalesce(deliveries.c.finished_at, deliveries.c.created_at) < before,
            )
            .limit(batch)
        )
        pending_single = select(deliveries.c.id).where(
            deliveries.c.status == "pending", deliveries.c.event_id == events.c.id
        )
        pending_digest = (
            select(delivery_events.c.event_id)
            .join(deliveries, deliveries.c.id == delivery_events.c.delivery_id)
            .where(deliveries.c.status == "pending", delivery_events.c.event_id == events.c.id)
        )
        old_events = (
            select(events.c.seq)
            .where(events.c.detected_at < before, ~pending_single.exists(), ~pending_digest.exists())
            .limit(batch)
        )
        with self.transaction(durable=False) as conn:
            removed = conn.execute(delete(deliveries).where(deliveries.c.id.in_(finished))).rowcount
            removed += conn.execute(delete(events).where(events.c.seq.in_(old_events))).rowcount
        return removed

    def checkpoint(self) -> None:
        """Fold the WAL into the database without blocking readers or the next poll."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _row_event(row: Any) -> Event:
    return Event(
        id=row.id, type=row.type, detected_at=row.detected_at, data=msgspec.json.decode(row.data), call_id=row.call_id
    )


def _row_delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        event_count=row.event_count,
        target=row.target,
        rule=row.rule,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        first_attempt_at=row.first_attempt_at,
        finished_at=row.finished_at,
        last_error=row.last_error,
    )
