"""Transition detection: (previous state, observation, clock, settings) -> (state, events).

A pure function, no I/O and no hidden clock, so that every rule of SPEC's event table
can be property-tested and so that a restart that resumes from the persisted state
produces exactly the events an uninterrupted run would have.

Cost model: at tens of thousands of calls a poll in steady state must cost next to
nothing here. A call whose raw entry is unchanged is skipped with one struct
comparison and one float comparison against its precomputed ``due`` time (the next
moment a timer event such as ``call.stuck_queued`` could fire).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from notifier.model import (
    IN_PROGRESS,
    QUEUED,
    Call,
    CallState,
    ConditionState,
    Event,
    PollFailure,
    Snapshot,
    SourceState,
    call_payload,
    created_at,
    iso,
    parse_iso,
)

#: A ``created_at``/``start_time`` later than the first sighting by more than this is
#: a clock problem upstream, not a fact: fall back to our own observation.
CLOCK_SKEW = 60.0
#: ... and one older than this is not plausible for a call that is still active.
MAX_PLAUSIBLE_AGE = 7 * 86400.0


class DetectSettings(msgspec.Struct, frozen=True):
    """The ``[detect]`` section plus ``source.unreachable_after``, in seconds."""

    stuck_queued_after: float = 120.0
    stuck_queued_repeat: float = 0.0
    long_running_after: float = 0.0
    missing_polls: int = 1
    announce_existing: bool = False
    unreachable_after: float = 60.0

    @property
    def timers(self) -> tuple[float, float, float]:
        return (self.stuck_queued_after, self.stuck_queued_repeat, self.long_running_after)


class DetectState(msgspec.Struct, frozen=True):
    """Everything detection needs from the past. Persisted whole after every poll."""

    instance: str  # random per source and store: makes event ids unique across installations
    name: str = "default"  # the source (Bland organisation) this state follows
    calls: dict[str, CallState] = {}
    source: SourceState = SourceState()
    next_seq: int = 1
    # The timer settings the stored ``due`` times were computed with; a reload that
    # changes them recomputes every ``due`` once.
    timers: tuple[float, float, float] = (0.0, 0.0, 0.0)
    conditions: ConditionState = ConditionState()  # see ``notifier.conditions``


class Transition(msgspec.Struct, frozen=True):
    """The result of one poll: new state, its events, and which rows changed."""

    state: DetectState
    events: list[Event]
    changed: list[CallState]  # rows to upsert
    removed: list[str]  # call_ids to delete
    base_seq: int = 1  # the state's ``next_seq`` before this poll: a commit checks it is still the stored one


def event_id(instance: str, seq: int) -> str:
    return f"evt_{instance}_{seq:010d}"


class _Emitter:
    """Numbers events in detection order; the numbering is part of the state."""

    def __init__(self, state: DetectState, now: float) -> None:
        self.instance = state.instance
        self.source = state.name
        self.seq = state.next_seq
        self.now = now
        self.events: list[Event] = []
        self._payloads: dict[int, dict[str, Any]] = {}  # a call's payload, shared by its events

    def emit(self, type_: str, data: dict[str, Any], call: Call | None = None) -> None:
        for key, value in data.items():  # a duration in milliseconds, not 0.7890000343322754
            if key.endswith("_seconds") and isinstance(value, float):
                data[key] = round(value, 3)
        if call is not None:
            payload = self._payloads.get(id(call))
            if payload is None:
                payload = self._payloads[id(call)] = call_payload(call)
            data = {"call": payload, **data}
        data["source"] = self.source
        self.events.append(
            Event(
                id=event_id(self.instance, self.seq),
                type=type_,
                detected_at=self.now,
                data=data,
                call_id=call.call_id if call is not None else None,
            )
        )
        self.seq += 1


def detect(state: DetectState, observation: Snapshot | PollFailure, now: float, settings: DetectSettings) -> Transition:
    """Compute the transitions one poll reveals. A failed poll only moves source health."""
    if isinstance(observation, PollFailure):
        return _on_failure(state, observation, now, settings)
    return _on_snapshot(state, observation, now, settings)


def _on_failure(state: DetectState, failure: PollFailure, now: float, settings: DetectSettings) -> Transition:
    out = _Emitter(state, now)
    src = state.source
    since = src.failing_since if src.failing_since is not None else now
    source = msgspec.structs.replace(src, failing_since=since, failures=src.failures + 1, last_error=failure.reason)
    if not source.unreachable and source.unreachable_at(now, settings.unreachable_after):
        out.emit(
            "source.unreachable",
            {"since": iso(since), "consecutive_failures": source.failures, "last_error": failure.reason},
        )
        source = msgspec.structs.replace(source, unreachable=True)
    new = msgspec.structs.replace(state, source=source, next_seq=out.seq)
    return Transition(state=new, events=out.events, changed=[], removed=[], base_seq=state.next_seq)


def _on_snapshot(state: DetectState, snapshot: Snapshot, now: float, settings: DetectSettings) -> Transition:
    out = _Emitter(state, now)
    src = state.source
    if src.unreachable:
        downtime = now - src.failing_since if src.failing_since is not None else None
        out.emit("source.recovered", {"downtime_seconds": downtime})

    calls = dict(state.calls)
    changed: dict[str, CallState] = {}
    if state.timers != settings.timers:
        for call_id, cs in calls.items():
            rescheduled = _with_due(cs, settings)
            if rescheduled is not cs:
                calls[call_id] = changed[call_id] = rescheduled
    baseline = not src.ever_succeeded and not settings.announce_existing

    # The steady state in one C-speed pass: a call whose decoded entry is the very
    # object seen last poll, present then, and with no timer due, needs no work.
    known = calls.get  # after any rescheduling above, so ``due`` is current
    touched = [
        (call_id, call)
        for call_id, call in snapshot.calls.items()
        if (seen := known(call_id)) is None or seen.call is not call or seen.missing or now >= seen.due
    ]
    for call_id, call in touched:
        prev = calls.get(call_id)
        if prev is None:
            cs = _appeared(call, now, baseline, out)
        elif prev.missing == 0 and (prev.call is call or prev.call == call):
            if now < prev.due:
                continue  # the steady state: nothing to do for this call
            cs = prev
        else:
            cs = _seen_again(prev, call, now, out)
        cs = _check_timers(cs, now, settings, out)
        cs = _with_due(cs, settings)
        if cs is not prev:
            calls[call_id] = changed[call_id] = cs

    removed: list[str] = []
    gone = calls.keys() - snapshot.calls.keys()
    for call_id in sorted(gone, key=lambda cid: (calls[cid].first_seen, cid)):
        prev = calls[call_id]
        last_seen = prev.last_seen if prev.missing else src.last_success
        if prev.missing + 1 >= settings.missing_polls:
            del calls[call_id]
            changed.pop(call_id, None)
            removed.append(call_id)
            observed = (last_seen - prev.first_seen) if last_seen is not None else None
            out.emit(
                "call.disappeared",
                {
                    "was_started": prev.started,
                    "was_stuck": prev.stuck_at is not None,
                    "last_status": prev.call.status,
                    "observed_seconds": observed,
                    "outcome": None,
                },
                prev.call,
            )
        else:
            cs = msgspec.structs.replace(prev, missing=prev.missing + 1, last_seen=last_seen)
            calls[call_id] = changed[call_id] = cs

    source = SourceState(ever_succeeded=True, last_success=now)
    new = DetectState(
        instance=state.instance,
        name=state.name,
        calls=calls,
        source=source,
        next_seq=out.seq,
        timers=settings.timers,
        conditions=state.conditions,
    )
    return Transition(
        state=new, events=out.events, changed=list(changed.values()), removed=removed, base_seq=state.next_seq
    )


def _appeared(call: Call, now: float, baseline: bool, out: _Emitter) -> CallState:
    cs = CallState(call=call, first_seen=now)
    if not baseline:
        out.emit("call.appeared", {}, call)
    if call.status == IN_PROGRESS:
        if not baseline:
            queued = _queued_for_at_start(call, None)
            out.emit("call.started", {"queued_for_seconds": queued, "was_stuck": False}, call)
        cs = msgspec.structs.replace(cs, started=True, in_progress_since=now)
    return cs


def _seen_again(prev: CallState, call: Call, now: float, out: _Emitter) -> CallState:
    """A known call whose entry changed, or that is back after missing some polls."""
    cs = msgspec.structs.replace(prev, call=call, missing=0, last_seen=None)
    old, new = prev.call.status, call.status
    if old == new:
        return cs
    if new == IN_PROGRESS and not prev.started:
        queued = _queued_for_at_start(call, now - prev.first_seen)
        out.emit(
            "call.started",
            {"queued_for_seconds": queued, "was_stuck": prev.stuck_at is not None},
            call,
        )
        return msgspec.structs.replace(cs, started=True, in_progress_since=now)
    out.emit("call.status_changed", {"previous_status": old}, call)
    return cs  # back to IN_PROGRESS: it started before, and its start time was kept then


def _queued_for_at_start(call: Call, observed: float | None) -> float | None:
    """SPEC: ``start_time - created_at`` when both are known, else what we observed."""
    start, created = parse_iso(call.start_time), created_at(call)
    if start is not None and created is not None and start >= created:
        return start - created
    return observed


def queued_since(cs: CallState) -> float:
    """Since when a call has been queued: Bland's ``created_at`` when plausible, else our first sighting."""
    created = created_at(cs.call)
    if _plausible(created, cs.first_seen):
        return created  # type: ignore[return-value]
    return cs.first_seen


def _in_progress_since(cs: CallState) -> float:
    start = parse_iso(cs.call.start_time)
    if _plausible(start, cs.first_seen):
        return start  # type: ignore[return-value]
    return cs.in_progress_since or cs.first_seen  # (set whenever a call has started)


def _plausible(ts: float | None, first_seen: float) -> bool:
    """Upstream times are trusted only if they fit what we saw ourselves."""
    return ts is not None and first_seen - MAX_PLAUSIBLE_AGE <= ts <= first_seen + CLOCK_SKEW


def _check_timers(cs: CallState, now: float, settings: DetectSettings, out: _Emitter) -> CallState:
    status = cs.call.status
    stuck_after = settings.stuck_queued_after
    if status == QUEUED and stuck_after > 0:
        waited = now - queued_since(cs)
        repeat = settings.stuck_queued_repeat
        if waited >= stuck_after and (cs.stuck_at is None or (repeat > 0 and now - cs.stuck_at >= repeat)):
            out.emit(
                "call.stuck_queued",
                {"queued_for_seconds": waited, "threshold_seconds": stuck_after},
                cs.call,
            )
            cs = msgspec.structs.replace(cs, stuck_at=now)
    long_after = settings.long_running_after
    if status == IN_PROGRESS and long_after > 0 and not cs.long_running:
        running = now - _in_progress_since(cs)
        if running >= long_after:
            out.emit("call.long_running", {"in_progress_for_seconds": running}, cs.call)
            cs = msgspec.structs.replace(cs, long_running=True)
    return cs


def _with_due(cs: CallState, settings: DetectSettings) -> CallState:
    """Precompute when this call's next timer event could fire (inf: never)."""
    due = math.inf
    status = cs.call.status
    if status == QUEUED and settings.stuck_queued_after > 0:
        if cs.stuck_at is None:
            due = queued_since(cs) + settings.stuck_queued_after
        elif settings.stuck_queued_repeat > 0:
            due = cs.stuck_at + settings.stuck_queued_repeat
    elif status == IN_PROGRESS and settings.long_running_after > 0 and not cs.long_running:
        due = _in_progress_since(cs) + settings.long_running_after
    if due == cs.due:
        return cs
    return msgspec.structs.replace(cs, due=due)
