"""The store: current calls and source state, events, the poll log and the delivery outbox,
on SQLite (one host) or PostgreSQL (several hosts).

One transaction per poll holds the new detection state, its events and the
deliveries they cause, so a crash at any instant either keeps all of a poll or none
of it: nothing is lost and, after a restart, nothing is announced twice. The
transaction also checks that it continues the stored state (and, in a daemon, that
its leadership term is still the current one), so a second writer can never fork it.

Callers cannot tell the backends apart: the dialect's specifics live in ``sqlite.py``
and ``postgres.py``.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import msgspec
from sqlalchemy import Text, and_, case, delete, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from notifier.detect import DetectState, Transition, queued_since
from notifier.model import CallState, ConditionState, Event, SourceState
from notifier.quiet import Silence
from notifier.route import PlannedDelivery
from notifier.store import postgres, sqlite
from notifier.store.schema import (
    attempts,
    calls,
    deliveries,
    delivery_events,
    events,
    metadata,
    polls,
    silences,
    sources,
)
from notifier.store.sqlite import BUSY_TIMEOUT

__all__ = [
    "BUSY_TIMEOUT",
    "AttemptRecord",
    "Delivery",
    "Fence",
    "PollRecord",
    "StaleState",
    "Store",
    "StoreError",
    "error_reason",
    "metadata",
]

POLL_LOG_KEEP = 1000
WRITE_CHUNK = 5000
#: A search reads at most this many of the newest events (a scan of each one's JSON).
SEARCH_WINDOW = 100_000

_call_state_encoder = msgspec.msgpack.Encoder()
_call_state_decoder = msgspec.msgpack.Decoder(CallState)
_json = msgspec.json.Encoder()
_source_decoder = msgspec.json.Decoder(SourceState)
_conditions_decoder = msgspec.json.Decoder(ConditionState)


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to do."""


class StoreLocationError(StoreError):
    """``storage.url`` names a place this user cannot keep a database: configuration,
    which restarting will not cure (exit 78)."""


class StaleState(StoreError):
    """A poll did not continue the stored state: another writer committed in between.
    Nothing of the poll was kept; the caller reloads the state from the store."""


class Fence(Protocol):
    """What a poll commit checks, inside its transaction, before writing anything
    (``notifier.lease.Term``): raises if the writer no longer leads."""

    def verify(self, conn: Connection) -> None: ...


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str  # the first (or only) event
    event_count: int
    target: str
    rule: str
    status: str  # pending | sent | dead | silenced | muted | inhibited
    attempts: int
    created_at: float
    next_attempt_at: float
    first_attempt_at: float | None
    finished_at: float | None
    last_error: str | None
    quieted_by: str | None = None  # the silence, interval or condition behind a quieted status


#: Statuses of a delivery that is over: pruned after ``retention``.
FINISHED = ("sent", "dead", "silenced", "muted", "inhibited")


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


@dataclass(frozen=True)
class SourceRow:
    """A source's committed health and size, for ``notifier status`` and standbys."""

    name: str
    state: SourceState
    calls: dict[str, int]  # by status


class Store:
    """Thin shell around the database: every method is one short transaction.

    ``create=False`` (read commands) never creates anything: a missing SQLite file is
    ``no database at PATH``.
    """

    def __init__(self, url: str, env: dict[str, str] | None = None, *, create: bool = True) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self.path: Path | None = None
        if self.dialect == "sqlite":
            try:
                self.path = sqlite.database_path(url, env)
            except sqlite.PathError as exc:
                raise StoreError(str(exc)) from None
            if not create and not self.path.exists():
                raise StoreError(f"no database at {self.path}")
            problem = sqlite.location_problem(self.path) if create else None
            if problem:
                raise StoreLocationError(f"storage.url: {problem}")
            try:
                sqlite.check_header(self.path)
            except sqlite.PathError as exc:
                raise StoreError(str(exc)) from None
            try:
                sqlite.create_private(self.path)
            except OSError as exc:
                raise StoreError(f"cannot create database {self.path}: {exc.strerror}") from None
            self.engine = sqlite.make_engine(self.path)
        elif self.dialect == "postgresql":
            try:
                self.engine = postgres.make_engine(url)
            except ModuleNotFoundError as exc:
                raise StoreError(str(exc)) from None
        else:
            raise StoreError(
                f"storage.url: unsupported database {self.dialect!r} (sqlite:/// or postgresql+psycopg://)"
            )
        self._qmark = self.engine.dialect.paramstyle == "qmark"

    @property
    def description(self) -> str:
        """Where the store is, fit for a log line: the file, or the URL without its password."""
        if self.path is not None:
            return str(self.path)
        return display_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Connection]:
        """A write transaction: committed on exit, rolled back on any exception."""
        with self.engine.connect() as conn:
            conn.execution_options(write=True, durable=durable)
            with conn.begin():
                yield conn

    def _sql(self, text: str) -> str:
        """Hot-path SQL is written once with ``?``; psycopg wants ``%s``."""
        return text if self._qmark else _to_format(text)

    # -- schema ---------------------------------------------------------------------

    def upgrade(self) -> None:
        """Apply the Alembic migrations shipped inside the package (once, however many
        daemons start together: see ``migrations/env.py``). A damaged file is a
        StoreError (waiting will not cure it); other database errors are raised as they are."""
        from notifier.migrate import upgrade

        try:
            upgrade(self.engine)
        except SQLAlchemyError as exc:
            if self.dialect == "sqlite" and sqlite.is_damaged(exc):
                raise StoreError(
                    f"the database {self.path} is damaged ({error_reason(exc)}); it was left as it is: "
                    "restore it from a backup or move it aside"
                ) from None
            raise

    def require_schema(self) -> None:
        """For read commands: the database must be at this version's schema."""
        from notifier.migrate import current_revision, head_revision

        try:
            with self.engine.connect() as conn:
                current = current_revision(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the database at {self.description}: {error_reason(exc)}") from None
        if current != head_revision():
            found = f"schema {current}" if current else "no schema"
            raise StoreError(
                f"the database at {self.description} has {found}; 'notifier db upgrade' (or starting the daemon) "
                f"brings it to {head_revision()}"
            )

    # -- detection state ----------------------------------------------------------------

    def load_state(self, source: str = "default") -> DetectState:
        """The committed state of one source (a new source starts empty, with ids of its own)."""
        with self.transaction() as conn:
            row = conn.execute(select(sources).where(sources.c.name == source)).first()
            if row is None:
                instance = secrets.token_hex(6)
                _insert_source(conn, source, instance)
                return DetectState(instance=instance, name=source)
            # Order does not matter: detection orders what it emits by itself.
            loaded = {
                r.call_id: _call_state_decoder.decode(r.state)
                for r in conn.execute(select(calls.c.call_id, calls.c.state).where(calls.c.source == source))
            }
        return DetectState(
            instance=row.instance,
            name=source,
            calls=loaded,
            source=_source_decoder.decode(row.state),
            next_seq=row.next_seq,
            timers=tuple(msgspec.json.decode(row.timers)),
            conditions=_conditions_decoder.decode(row.conditions) if row.conditions else ConditionState(),
        )

    def conditions_of(self, source: str) -> ConditionState:
        """The committed condition state of one source (read only: ``route-test``)."""
        with self.engine.connect() as conn:
            raw = conn.execute(select(sources.c.conditions).where(sources.c.name == source)).scalar()
        return _conditions_decoder.decode(raw) if raw else ConditionState()

    def commit_poll(
        self,
        transition: Transition,
        planned: Sequence[PlannedDelivery],
        poll: PollRecord,
        fence: Fence | None = None,
    ) -> None:
        """Persist one poll whole: state, events, their deliveries and the poll log.

        Raises StaleState (keeping nothing) when the stored state is not the one the
        poll started from, and the fence's error when the writer no longer leads.

        A poll with events is fsynced before anything is sent. One without events
        is not: a power cut can only roll it back to a state the next poll reaches
        again (no event id was handed out), and a steady daemon then costs no fsync.
        """
        state = transition.state
        name = state.name
        sql = self._sql
        with self.transaction(durable=bool(transition.events)) as conn:
            if fence is not None:
                fence.verify(conn)
            # Event numbers are taken here, under the write lock: the poll's ids follow
            # the stored sequence or the poll is not kept.
            stored = conn.exec_driver_sql(
                sql("SELECT next_seq FROM sources WHERE name = ?" + ("" if self._qmark else " FOR UPDATE")), (name,)
            ).scalar()
            if stored is None and transition.base_seq == 1:  # a source's first commit
                _insert_source(conn, name, state.instance)
                stored = 1
            if stored != transition.base_seq:
                raise StaleState(
                    f"source {name!r}: the store is at event {stored}, this poll started from {transition.base_seq}"
                )
            # The hot path of a poll: plain DB-API executemany, no per-row SQL building.
            for start in range(0, len(transition.changed), WRITE_CHUNK):  # bounded memory on a first poll
                conn.exec_driver_sql(
                    sql(
                        "INSERT INTO calls (source, call_id, status, state, queued_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (source, call_id) DO UPDATE SET status = excluded.status, state = excluded.state, "
                        "queued_at = excluded.queued_at"
                    ),
                    [
                        (name, cs.call.call_id, cs.call.status, _call_state_encoder.encode(cs), queued_since(cs))
                        for cs in transition.changed[start : start + WRITE_CHUNK]
                    ],
                )
            if transition.removed:
                conn.exec_driver_sql(
                    sql("DELETE FROM calls WHERE source = ? AND call_id = ?"),
                    [(name, cid) for cid in transition.removed],
                )
            if transition.events:
                conn.exec_driver_sql(
                    sql("INSERT INTO events (id, type, call_id, detected_at, data, source) VALUES (?, ?, ?, ?, ?, ?)"),
                    [(e.id, e.type, e.call_id, e.detected_at, _json.encode(e.data), name) for e in transition.events],
                )
            if planned:
                self._insert_deliveries(conn, planned, poll.at)
            conn.exec_driver_sql(
                sql("UPDATE sources SET next_seq = ?, state = ?, timers = ?, conditions = ? WHERE name = ?"),
                (
                    state.next_seq,
                    _json.encode(state.source),
                    _json.encode(state.timers),
                    _json.encode(state.conditions) if state.conditions != ConditionState() else None,
                    name,
                ),
            )
            poll_id = conn.exec_driver_sql(
                sql(
                    "INSERT INTO polls (at, duration, ok, calls, skipped, events, error, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (poll.at, poll.duration, poll.ok, poll.calls, poll.skipped, len(transition.events), poll.error, name),
            ).scalar_one()
            if poll_id % 100 == 0:
                conn.execute(delete(polls).where(polls.c.id <= poll_id - POLL_LOG_KEEP))

    def _insert_deliveries(self, conn: Connection, planned: Sequence[PlannedDelivery], now: float) -> list[int]:
        # Ids are assigned here so that both tables take one executemany each, however
        # many deliveries a burst of events causes. SQLite: the write lock is held, the
        # next ids are free. PostgreSQL: several sources commit side by side, so the ids
        # come from the table's sequence, all in one round trip.
        if self._qmark:
            first = conn.exec_driver_sql("SELECT coalesce(max(id), 0) + 1 FROM deliveries").scalar_one()
            ids: Sequence[int] = range(first, first + len(planned))
        else:
            ids = (
                conn.exec_driver_sql(
                    "SELECT nextval(pg_get_serial_sequence('deliveries', 'id')) FROM generate_series(1, %s)",
                    (len(planned),),
                )
                .scalars()
                .all()
            )
        rows: list[tuple[object, ...]] = []
        links: list[tuple[int, str]] = []
        for delivery_id, plan in zip(ids, planned, strict=True):
            finished = None if plan.status == "pending" else now
            due = plan.not_before if plan.not_before is not None else now
            row = (delivery_id, plan.event_ids[0], len(plan.event_ids), plan.target, plan.rule, plan.status)
            rows.append((*row, now, due, finished, plan.quieted_by))
            if len(plan.event_ids) > 1:
                links.extend((delivery_id, event_id) for event_id in plan.event_ids)
        conn.exec_driver_sql(
            self._sql(
                "INSERT INTO deliveries (id, event_id, event_count, target, rule, status, attempts, created_at, "
                "next_attempt_at, finished_at, quieted_by) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
            ),
            rows,
        )
        if links:
            conn.exec_driver_sql(self._sql("INSERT INTO delivery_events (delivery_id, event_id) VALUES (?, ?)"), links)
        return list(ids)

    # -- queries for the CLI ------------------------------------------------------------

    def events(
        self,
        *,
        since: float | None = None,
        types: Sequence[str] = (),
        call_id: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[Event]:
        """Recorded events, oldest first (see ``sourced_events``)."""
        found = self.sourced_events(
            since=since, types=types, call_id=call_id, source=source, limit=limit, offset=offset, search=search
        )
        return [event for _, event in found]

    def sourced_events(
        self,
        *,
        since: float | None = None,
        types: Sequence[str] = (),
        call_id: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[tuple[str, Event]]:
        """Recorded events with their source, oldest first (the newest ``limit`` when given, after skipping
        the newest ``offset``). ``search``: the text appears in the event's JSON (a call
        id, a number, an objective), in any case, among the newest ``SEARCH_WINDOW``."""
        query = select(events).order_by(events.c.seq.desc())
        if since is not None:
            query = query.where(events.c.detected_at >= since)
        if types:
            query = query.where(events.c.type.in_(list(types)))
        if call_id:
            query = query.where(events.c.call_id == call_id)
        if source:
            query = query.where(events.c.source == source)
        if search:  # over the newest SEARCH_WINDOW events: the cost is bounded, whatever the history
            query = query.where(events.c.seq > select(func.max(events.c.seq)).scalar_subquery() - SEARCH_WINDOW)
            data = events.c.data
            text = type_coerce(data, Text) if self._qmark else func.convert_from(data, "UTF8", type_=Text)
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(text.ilike(pattern, escape="\\"))
        if limit:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(row.source, _row_event(row)) for row in reversed(rows)]

    def active_calls(
        self,
        *,
        source: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        counts: Mapping[str, Mapping[str, int]] | None = None,
    ) -> tuple[int, list[tuple[str, CallState]]]:
        """(how many calls match, one page of them as (source, state)), the longest
        queued first. Each (source, status) is read in order from ``ix_calls_oldest``
        and the few lists are merged, so a page costs the same at any number of calls.
        ``counts``: the counts by source and status when the caller has just read them."""
        groups = [
            (name, call_status, count)
            for name, by_status in (counts if counts is not None else self._status_counts()).items()
            if source is None or name == source
            for call_status, count in by_status.items()
            if status is None or call_status == status
        ]
        wanted = offset + limit
        runs = []
        with self.engine.connect() as conn:
            for name, call_status, _ in groups:
                query = (
                    select(calls.c.queued_at, calls.c.call_id, calls.c.source, calls.c.state)
                    .where(calls.c.source == name, calls.c.status == call_status)
                    .order_by(calls.c.queued_at, calls.c.call_id)
                    .limit(wanted)
                )
                runs.append(conn.execute(query).all())
        merged = heapq.merge(*runs, key=lambda row: (row.queued_at if row.queued_at is not None else 0.0, row.call_id))
        page = list(itertools.islice(merged, offset, wanted))
        return sum(count for *_, count in groups), [(r.source, _call_state_decoder.decode(r.state)) for r in page]

    def _status_counts(self) -> dict[str, dict[str, int]]:
        """Active calls by source and status (a scan of ``ix_calls_oldest`` alone)."""
        with self.engine.connect() as conn:
            counts = conn.execute(
                select(calls.c.source, calls.c.status, func.count()).group_by(calls.c.source, calls.c.status)
            ).all()
        by_source: dict[str, dict[str, int]] = {}
        for name, call_status, count in counts:
            by_source.setdefault(name, {})[call_status] = int(count)
        return by_source

    def sources(self) -> list[SourceRow]:
        """Every source's committed health and its active calls by status."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(sources.c.name, sources.c.state).order_by(sources.c.name)).all()
        by_source = self._status_counts()
        return [SourceRow(r.name, _source_decoder.decode(r.state), by_source.get(r.name, {})) for r in rows]

    # -- the outbox ---------------------------------------------------------------------

    def due_deliveries(
        self,
        target: str,
        now: float,
        limit: int = 50,
        fence: Fence | None = None,
        horizon: float | None = None,
    ) -> list[tuple[Delivery, list[Event]]]:
        """Pending deliveries of one target that are due, in event order, with their events.
        With a fence, the batch is read only while the writer still leads. ``horizon``:
        the longest wait the target ever schedules (its ``retry_max``); a row due later
        than that was scheduled before the wall clock jumped back, and is due now."""
        due = deliveries.c.next_attempt_at <= now
        if horizon is not None:  # (a held delivery waits for its mute's end, however far: not a clock jump)
            due = or_(due, and_(deliveries.c.next_attempt_at > now + horizon, deliveries.c.quieted_by.is_(None)))
        with self.engine.connect() as conn:
            if fence is not None:
                fence.verify(conn)
            rows = conn.execute(
                select(deliveries)
                .where(deliveries.c.status == "pending", deliveries.c.target == target, due)
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
        sql = self._sql
        with self.transaction(durable=False) as conn:
            # Fixed SQL: this runs once per message sent, hundreds of times a second in a burst.
            conn.exec_driver_sql(
                sql(
                    "INSERT INTO attempts (delivery_id, at, outcome, status_code, error, latency) "
                    "VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (delivery.id, attempt.at, attempt.outcome, attempt.status_code, attempt.error, attempt.latency),
            )
            conn.exec_driver_sql(
                sql(
                    "UPDATE deliveries SET attempts = attempts + 1, status = ?, last_error = ?, "
                    "first_attempt_at = coalesce(first_attempt_at, ?), "
                    "next_attempt_at = coalesce(?, next_attempt_at), finished_at = ? WHERE id = ?"
                ),
                (
                    "pending" if failed else attempt.outcome,  # sent | dead
                    attempt.error,
                    attempt.at,
                    attempt.next_attempt_at if failed else None,
                    None if failed else attempt.at,
                    delivery.id,
                ),
            )

    def deliveries(
        self, status: str | None = None, limit: int | None = None, since: float | None = None, offset: int = 0
    ) -> list[Delivery]:
        """Deliveries, oldest first (the newest ``limit`` when given, after skipping the newest ``offset``)."""
        query = select(deliveries).order_by(deliveries.c.id.desc())
        if status:
            query = query.where(deliveries.c.status == status)
        if since is not None:
            query = query.where(deliveries.c.created_at >= since)
        if limit:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.engine.connect() as conn:
            return [_row_delivery(r) for r in reversed(conn.execute(query).all())]

    def delivery(self, delivery_id: int) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return _row_delivery(row) if row is not None else None

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

    def redeliver(self, now: float, *, event_id: str | None = None, delivery_id: int | None = None) -> int:
        """Re-queue dead deliveries (of one event, one delivery, or all); returns how many."""
        query = update(deliveries).where(deliveries.c.status == "dead")
        if event_id is not None:
            linked = select(delivery_events.c.delivery_id).where(delivery_events.c.event_id == event_id)
            query = query.where(or_(deliveries.c.event_id == event_id, deliveries.c.id.in_(linked)))
        if delivery_id is not None:
            query = query.where(deliveries.c.id == delivery_id)
        with self.transaction() as conn:
            result = conn.execute(
                query.values(
                    status="pending",
                    attempts=0,  # a fresh start: backoff and give-up count from the redelivery
                    next_attempt_at=now,
                    first_attempt_at=None,
                    finished_at=None,
                )
            )
        return result.rowcount

    def retire_targets(self, configured: Sequence[str], now: float) -> int:
        """Pending deliveries of targets no longer in the config are dead (redeliverable
        once the target is back); returns how many."""
        query = update(deliveries).where(deliveries.c.status == "pending")
        if configured:
            query = query.where(deliveries.c.target.not_in(list(configured)))
        with self.transaction() as conn:
            return conn.execute(
                query.values(status="dead", finished_at=now, last_error="the target is no longer in the configuration")
            ).rowcount

    def quiet(self, delivery_id: int, status: str, reason: str | None, now: float, until: float | None = None) -> None:
        """A due delivery judged quiet: ``silenced``/``muted`` for good, or held
        (``pending``) until ``until``. Only a still-pending row changes."""
        values: dict[str, Any] = {"status": status, "quieted_by": reason}
        if status == "pending":
            values["next_attempt_at"] = until
        else:
            values["finished_at"] = now
        with self.transaction(durable=False) as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending")
                .values(values)
            )

    def digest_held(self, delivery_ids: Sequence[int], now: float) -> int | None:
        """Deliveries held by one mute, for one rule and target, become one digest
        delivery (due now), in one transaction: their events stay, in event order.
        Returns the digest's id (None: they were no longer all pending)."""
        with self.transaction() as conn:
            rows = conn.execute(
                select(deliveries)
                .where(deliveries.c.id.in_(list(delivery_ids)), deliveries.c.status == "pending")
                .order_by(deliveries.c.id)
            ).all()
            if len(rows) != len(delivery_ids) or len({(r.rule, r.target) for r in rows}) != 1:
                return None
            event_ids = [eid for r in rows for eid in self._events_of(conn, r)]
            first = rows[0]
            conn.execute(delete(deliveries).where(deliveries.c.id.in_(list(delivery_ids))))
            plan = PlannedDelivery(first.target, first.rule, tuple(event_ids), "pending", first.quieted_by, now)
            [digest] = self._insert_deliveries(conn, [plan], now)
            return digest

    def peel(self, delivery: Delivery, quieted: Sequence[tuple[str, str, str]], now: float) -> None:
        """Take some events out of a pending digest, each recorded with its own quiet
        status and reason ``(event_id, status, reason)``; the digest keeps the rest."""
        gone = [event_id for event_id, _, _ in quieted]
        with self.transaction() as conn:
            row = conn.execute(
                select(deliveries).where(deliveries.c.id == delivery.id, deliveries.c.status == "pending")
            ).first()
            if row is None:
                return
            rest = [eid for eid in self._events_of(conn, row) if eid not in gone]
            if not rest:
                return
            conn.execute(
                delete(delivery_events).where(
                    delivery_events.c.delivery_id == delivery.id, delivery_events.c.event_id.in_(gone)
                )
            )
            conn.execute(
                update(deliveries).where(deliveries.c.id == delivery.id).values(event_id=rest[0], event_count=len(rest))
            )
            plans = [PlannedDelivery(row.target, row.rule, (eid,), status, reason) for eid, status, reason in quieted]
            self._insert_deliveries(conn, plans, now)

    @staticmethod
    def _events_of(conn: Connection, row: Any) -> list[str]:
        if row.event_count == 1:
            return [row.event_id]
        return list(
            conn.execute(
                select(delivery_events.c.event_id)
                .join(events, events.c.id == delivery_events.c.event_id)
                .where(delivery_events.c.delivery_id == row.id)
                .order_by(events.c.seq)
            ).scalars()
        )

    # -- silences -------------------------------------------------------------------------

    def add_silence(self, silence: Silence, matchers: Sequence[str]) -> None:
        with self.transaction() as conn:
            conn.execute(
                insert(silences).values(
                    id=silence.id,
                    matchers=_json.encode(list(matchers)),
                    starts_at=silence.starts_at,
                    ends_at=silence.ends_at,
                    comment=silence.comment,
                    author=silence.author,
                    created_at=silence.created_at,
                )
            )

    def silences(self, now: float | None = None) -> list[Silence]:
        """Silences not yet ended at ``now`` (active or future), oldest first; None: all."""
        from notifier.route import parse_matcher

        query = select(silences).order_by(silences.c.created_at, silences.c.id)
        if now is not None:
            query = query.where(silences.c.ends_at > now)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        found = []
        for r in rows:
            # Fields were checked when it was made (perhaps by a newer version, whose
            # fields this one lacks: they compare as empty). A row that does not parse
            # at all is left out, never the reason nothing else works.
            try:
                matchers = tuple(parse_matcher(text) for text in msgspec.json.decode(r.matchers))
            except (ValueError, TypeError, msgspec.DecodeError):
                continue
            found.append(Silence(r.id, matchers, r.starts_at, r.ends_at, r.comment, r.author, r.created_at))
        return found

    def release_held(self, now: float) -> int:
        """Held deliveries become due now, to be judged again (a reload may have ended
        or moved their mute); returns how many."""
        with self.transaction(durable=False) as conn:
            return conn.execute(
                update(deliveries)
                .where(deliveries.c.status == "pending", deliveries.c.quieted_by.is_not(None))
                .values(next_attempt_at=now)
            ).rowcount

    def held_due(self, target: str, rule: str, now: float) -> list[int]:
        """Every held delivery of one rule and target that is due: released together,
        they become one digest, however many batches they fill."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.status == "pending",
                        deliveries.c.target == target,
                        deliveries.c.rule == rule,
                        deliveries.c.quieted_by.is_not(None),
                        deliveries.c.next_attempt_at <= now,
                    )
                    .order_by(deliveries.c.id)
                ).scalars()
            )

    def expire_silence(self, silence_id: str, now: float) -> bool:
        """End a silence now (kept, as expired, for ``retention``). False: no such silence,
        or it had already ended."""
        with self.transaction() as conn:
            changed = conn.execute(
                update(silences)
                .where(silences.c.id == silence_id, silences.c.ends_at > now)
                .values(ends_at=now, starts_at=case((silences.c.starts_at > now, now), else_=silences.c.starts_at))
            ).rowcount
        return bool(changed)

    def queue_stats(self) -> tuple[int, float | None]:
        """(pending deliveries, created_at of the oldest one)."""
        with self.engine.connect() as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(deliveries.c.created_at)).where(deliveries.c.status == "pending")
            ).one()
        return int(depth), oldest

    def prune(self, before: float, batch: int = 500) -> int:
        """Delete one small batch of deliveries finished before ``before`` and of events
        older than that which no delivery refers to any more. Returns rows deleted; call again
        until it returns 0, so that no single transaction holds the lock for long."""
        finished = (
            select(deliveries.c.id)
            .where(
                deliveries.c.status.in_(FINISHED),
                func.coalesce(deliveries.c.finished_at, deliveries.c.created_at) < before,
            )
            .limit(batch)
        )
        # An event stays while any delivery of it does: a pending one needs it to be
        # sent, a dead one to be redelivered (it goes once it has been dead for
        # ``retention``, however old the event).
        single = select(deliveries.c.id).where(deliveries.c.event_id == events.c.id)
        digest = select(delivery_events.c.event_id).where(delivery_events.c.event_id == events.c.id)
        old_events = (
            select(events.c.seq).where(events.c.detected_at < before, ~single.exists(), ~digest.exists()).limit(batch)
        )
        with self.transaction(durable=False) as conn:
            removed = conn.execute(delete(deliveries).where(deliveries.c.id.in_(finished))).rowcount
            removed += conn.execute(delete(events).where(events.c.seq.in_(old_events))).rowcount
            removed += conn.execute(delete(silences).where(silences.c.ends_at < before)).rowcount
        return removed

    def checkpoint(self) -> None:
        """SQLite: fold the WAL into the database off the poll path (PostgreSQL does its own)."""
        if self.dialect == "sqlite":
            sqlite.checkpoint(self.engine)

    def count(self, table: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _insert_source(conn: Connection, name: str, instance: str) -> None:
    """A new source's row: numbering from 1, no history."""
    conn.execute(
        insert(sources).values(
            name=name,
            instance=instance,
            next_seq=1,
            state=_json.encode(SourceState()),
            timers=_json.encode((0.0, 0.0, 0.0)),
        )
    )


def display_url(url: str) -> str:
    """A database URL without its password, whether in the userinfo or the query."""
    parsed = make_url(url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def url_passwords(url: str) -> list[str]:
    """The password of a database URL, wherever it is given."""
    from urllib.parse import quote

    parsed = make_url(url)
    values = [str(v) for v in (parsed.password, parsed.query.get("password")) if v and isinstance(v, str)]
    return list(dict.fromkeys(values + [quote(v, safe="") for v in values]))  # as written in the URL, too


@cache
def _to_format(text: str) -> str:
    return text.replace("?", "%s")


def error_reason(exc: BaseException) -> str:
    """A store error in the driver's own words: one line, without SQLAlchemy's wrapping
    (and the SQL it quotes)."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


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
        quieted_by=row.quieted_by,
    )
