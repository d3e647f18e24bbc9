"""What the store holds, as people and scripts read it: one set of documents for the
CLI's ``--json`` output, the JSON API and the console, so that the three never drift.

Each view is a msgspec Struct: the API's OpenAPI schema is generated from these types.
"""

from __future__ import annotations

from typing import Any

import msgspec

from notifier.detect import queued_since
from notifier.model import CallState, Event, event_document, iso
from notifier.quiet import Silence
from notifier.store import AttemptRecord, Delivery, Store


class LeaderView(msgspec.Struct, frozen=True):
    host: str | None
    pid: int | None
    term: int
    since: str | None
    lease_expires_in_seconds: float


class SourceView(msgspec.Struct, frozen=True):
    name: str
    reachable: bool
    last_successful_poll: str | None
    consecutive_failures: int
    failing_since: str | None
    last_error: str | None
    active_calls: dict[str, int]  # by status


class ConditionView(msgspec.Struct, frozen=True):
    source: str
    condition: str
    group: dict[str, str]
    value: float
    firing_since: str | None


class QueueView(msgspec.Struct, frozen=True):
    pending: int
    oldest_seconds: float | None


class StatusReport(msgspec.Struct, frozen=True):
    """``notifier status --json`` and the API's ``/status``: the store's view, the same from every daemon."""

    leader: LeaderView | None
    sources: list[SourceView]
    conditions: list[ConditionView]
    queue: QueueView


def status_report(store: Store, now: float) -> StatusReport:
    from notifier.lease import read_leader

    info = read_leader(store)
    rows = store.sources()
    depth, oldest = store.queue_stats()
    firing = [(row.name, instance) for row in rows for instance in store.conditions_of(row.name).firing()]
    leader = None
    if info is not None and info.held:
        leader = LeaderView(info.host, info.pid, info.term, iso(info.since), round(info.expires_at - info.now, 3))
    return StatusReport(
        leader=leader,
        sources=[
            SourceView(
                name=row.name,
                reachable=not row.state.unreachable,
                last_successful_poll=iso(row.state.last_success),
                consecutive_failures=row.state.failures,
                failing_since=iso(row.state.failing_since),
                last_error=row.state.last_error,
                active_calls=row.calls,
            )
            for row in rows
        ],
        conditions=[ConditionView(name, i.condition, i.group, i.value, iso(i.firing_since)) for name, i in firing],
        queue=QueueView(depth, round(now - oldest, 3) if oldest is not None else None),
    )


class AttemptView(msgspec.Struct, frozen=True):
    at: str | None
    outcome: str
    status_code: int | None
    error: str | None
    latency_seconds: float


class DeliveryView(msgspec.Struct, frozen=True):
    id: int
    event_id: str
    events: int  # > 1: a digest
    target: str
    rule: str
    status: str  # pending | sent | dead | silenced | muted | inhibited
    attempts: int
    created_at: str | None
    next_attempt_at: str | None  # pending only
    finished_at: str | None
    last_error: str | None
    quieted_by: str | None
    attempt_log: list[AttemptView]


def delivery_view(d: Delivery, history: list[AttemptRecord]) -> DeliveryView:
    return DeliveryView(
        id=d.id,
        event_id=d.event_id,
        events=d.event_count,
        target=d.target,
        rule=d.rule,
        status=d.status,
        attempts=d.attempts,
        created_at=iso(d.created_at),
        next_attempt_at=iso(d.next_attempt_at) if d.status == "pending" else None,
        finished_at=iso(d.finished_at),
        last_error=d.last_error,
        quieted_by=d.quieted_by,
        attempt_log=[AttemptView(iso(a.at), a.outcome, a.status_code, a.error, round(a.latency, 4)) for a in history],
    )


class SilenceView(msgspec.Struct, frozen=True):
    id: str
    matchers: list[str]
    starts_at: str | None
    ends_at: str | None
    state: str  # active | pending | expired
    comment: str
    author: str
    created_at: str | None


def silence_state(silence: Silence, now: float) -> str:
    return "active" if silence.active(now) else "expired" if silence.ends_at <= now else "pending"


def silence_view(silence: Silence, now: float) -> SilenceView:
    return SilenceView(
        id=silence.id,
        matchers=[str(m) for m in silence.matchers],
        starts_at=iso(silence.starts_at),
        ends_at=iso(silence.ends_at),
        state=silence_state(silence, now),
        comment=silence.comment,
        author=silence.author,
        created_at=iso(silence.created_at),
    )


class EventView(msgspec.Struct, frozen=True):
    """The webhook body (``type``, ``timestamp``, ``data`` with the id) and the source."""

    type: str
    timestamp: str
    data: dict[str, Any]
    source: str


def event_view(event: Event, source: str) -> EventView:
    doc = event_document(event)
    return EventView(doc["type"], doc["timestamp"], doc["data"], source)


class CallView(msgspec.Struct, frozen=True):
    source: str
    call_id: str
    status: str
    to: str
    from_: str = msgspec.field(name="from")
    pathway_id: str = ""
    objective: str = ""
    queued_at: str | None = None
    queued_seconds: float = 0.0  # how long it has been waiting (or waited, once started)
    started: bool = False


def call_view(source: str, cs: CallState, now: float) -> CallView:
    call = cs.call
    since = queued_since(cs)
    return CallView(
        source=source,
        call_id=call.call_id,
        status=call.status,
        to=call.to,
        from_=call.from_,
        pathway_id=call.pathway_id,
        objective=call.objective,
        queued_at=iso(since),
        queued_seconds=round(max(0.0, now - since), 3),
        started=cs.started,
    )
