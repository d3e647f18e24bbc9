"""Conditions: campaign health over a source's whole snapshot, as events.

When a 10,000-call batch stalls, one message ("412 calls queued on pathway pw-7 for
6m") says what 412 stuck-call messages cannot. Beside detection and in its style:
(conditions, previous state, the poll's calls and events, clock) -> (state, events),
pure, evaluated on successful polls only, its state committed with the poll's, so a
restart neither repeats nor loses a firing or a resolution.

Cost: nothing without ``[[conditions]]``; with them, one pass over the poll's calls
for all conditions together (the snapshot metrics), and over five minutes of
transitions (the rates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from notifier.detect import DetectState, Transition, event_id, queued_since
from notifier.model import (
    QUEUED,
    Call,
    CallState,
    ConditionState,
    Event,
    GroupCount,
    Instance,
    Mark,
    Tally,
    international,
    iso,
)
from notifier.route import CALL_FIELDS, Matcher, field_text

SNAPSHOT_METRICS = ("queued", "in_progress", "active", "oldest_queued_seconds")
RATE_METRICS = ("started_per_minute", "ended_unstarted_per_minute")
METRICS = SNAPSHOT_METRICS + RATE_METRICS
#: The window the ``*_per_minute`` metrics count transitions over.
RATE_WINDOW = 300.0


@dataclass(frozen=True)
class Condition:
    name: str
    metric: str
    threshold: float
    above: bool  # True: holds while value > threshold; False: while value < threshold
    for_: float = 0.0
    keep_firing_for: float = 0.0
    group_by: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()
    inhibits: tuple[str, ...] = ()

    def holds(self, value: float) -> bool:
        return value > self.threshold if self.above else value < self.threshold


def instance_key(name: str, group: Mapping[str, str]) -> str:
    return name + "\x1f" + "\x1f".join(f"{k}={v}" for k, v in group.items())


def _international_text(call: Call) -> str:
    intl = international(call)
    return "" if intl is None else ("true" if intl else "false")


def _marks(events: Sequence[Event], keep: Sequence[str]) -> list[Mark]:
    """The poll's transitions a rate counts, with only the fields conditions group and
    match by (the whole window is committed with every poll: it must stay small)."""
    found = []
    for event in events:
        call = event.data.get("call")
        if not isinstance(call, dict):
            continue
        if event.type == "call.started":
            kind = "started"
        elif event.type == "call.disappeared" and event.data.get("was_started") is False:
            kind = "ended_unstarted"
        else:
            continue
        fields = {name: field_text(call.get(name)) for name in keep}
        found.append(Mark(event.detected_at, kind, fields))
    return found


class _Group:
    __slots__ = ("queued", "in_progress", "oldest", "started", "ended_unstarted")

    def __init__(self) -> None:
        self.queued = self.in_progress = self.started = self.ended_unstarted = 0
        self.oldest = math.inf  # the earliest queued_since

    def value(self, metric: str, now: float) -> float:
        if metric == "queued":
            return float(self.queued)
        if metric == "in_progress":
            return float(self.in_progress)
        if metric == "active":
            return float(self.queued + self.in_progress)
        if metric == "oldest_queued_seconds":
            return round(now - self.oldest, 3) if self.oldest != math.inf else 0.0
        count = self.started if metric == "started_per_minute" else self.ended_unstarted
        return round(count / (RATE_WINDOW / 60), 3)


#: Call fields by the attribute that holds them (``international`` needs normalising).
_ATTRS = {name: "from_" if name == "from" else name for name in CALL_FIELDS}
_FIELD_GETTERS: dict[str, Callable[[Call], str]] = {
    **{name: attrgetter(attr) for name, attr in _ATTRS.items()},
    "international": _international_text,
}


def _count(
    found: dict[tuple[str, ...], _Group], key: tuple[str, ...], queued: bool, cs: CallState, oldest: bool, sign: int
) -> None:
    group = found.get(key)
    if group is None:
        group = found[key] = _Group()
    if queued:
        group.queued += sign
        if oldest:
            group.oldest = min(group.oldest, queued_since(cs))
    else:
        group.in_progress += sign


def _tally(
    conditions: Sequence[Condition],
    groups: dict[str, dict[tuple[str, ...], _Group]],
    states: Iterable[CallState],
    sign: int,
) -> None:
    """Count (``sign`` 1) or uncount (-1) these calls into each condition's groups.

    The hot loop at 10k calls: a call's fields are built only for a condition that
    matches on them or groups by ``international`` (normalised); others read attributes."""
    if not conditions:
        return
    plain = [
        (cond, groups[cond.name], attrgetter(*[_ATTRS[g] for g in cond.group_by]) if cond.group_by else None)
        for cond in conditions
        if not cond.matchers and "international" not in cond.group_by
    ]
    fancy = [(cond, groups[cond.name]) for cond in conditions if (cond.matchers or "international" in cond.group_by)]
    needed = {f for cond, _ in fancy for f in (*cond.group_by, *(m.field for m in cond.matchers))}
    getters = [(name, _FIELD_GETTERS[name]) for name in sorted(needed)]
    oldest = {cond.name for cond in conditions if cond.metric == "oldest_queued_seconds"}
    for cs in states:
        if cs.missing:  # not in this poll's answer: about to disappear, not active
            continue
        call = cs.call
        queued = call.status == QUEUED
        for cond, found, get in plain:
            key = () if get is None else (get(call) if len(cond.group_by) > 1 else (get(call),))
            _count(found, key, queued, cs, cond.name in oldest, sign)
        if fancy:
            fields = {name: get(call) for name, get in getters}
            for cond, found in fancy:
                if all(m.matches(fields) for m in cond.matchers):
                    _count(found, tuple(fields[g] for g in cond.group_by), queued, cs, cond.name in oldest, sign)


@dataclass(frozen=True)
class Delta:
    """What detection changed this poll: counts follow it instead of a scan of every call."""

    previous: Mapping[str, CallState]  # the calls before the poll
    changed: Sequence[CallState]
    removed: Sequence[str]


def _signature(cond: Condition) -> str:
    """What a condition's stored counts depend on: a reload that changes it recounts."""
    return repr((cond.group_by, [str(m) for m in cond.matchers]))


def _measure(
    conditions: Sequence[Condition],
    calls: Mapping[str, CallState],
    marks: Sequence[Mark],
    tallies: Mapping[str, Tally],
    delta: Delta | None,
) -> tuple[dict[str, dict[tuple[str, ...], _Group]], dict[str, Tally]]:
    """Per condition, per group: the counts its metric needs, and the counts to keep.

    Counts of calls are kept between polls and moved by what detection changed: a
    steady poll costs nothing. ``oldest_queued_seconds`` needs a minimum, not a count:
    it is measured over every call."""
    groups: dict[str, dict[tuple[str, ...], _Group]] = {c.name: {} for c in conditions}
    # A rate grouped by call fields also knows the groups of the calls now active: a
    # pathway whose calls all wait, none starting, is the stall a rate is there to see.
    on_calls = [c for c in conditions if c.metric in SNAPSHOT_METRICS or c.group_by]
    counted = [c for c in on_calls if c.metric != "oldest_queued_seconds"]
    moved = []
    for cond in counted:
        kept = tallies.get(cond.name)
        if delta is not None and kept is not None and kept.signature == _signature(cond):
            for count in kept.groups:
                group = groups[cond.name][tuple(count.values)] = _Group()
                group.queued, group.in_progress = count.queued, count.in_progress
            moved.append(cond)
    _tally([c for c in on_calls if c not in moved], groups, calls.values(), 1)
    if moved and delta is not None:
        before = delta.previous
        _tally(moved, groups, (before[c] for c in delta.removed if c in before), -1)
        _tally(moved, groups, (before[cs.call.call_id] for cs in delta.changed if cs.call.call_id in before), -1)
        _tally(moved, groups, delta.changed, 1)
    kept_now: dict[str, Tally] = {}
    for cond in counted:
        found = groups[cond.name]
        for key in [k for k, g in found.items() if g.queued + g.in_progress <= 0]:
            del found[key]  # no call left in the group: it is gone
        kept_now[cond.name] = Tally(
            _signature(cond), [GroupCount(list(k), g.queued, g.in_progress) for k, g in sorted(found.items())]
        )
    on_marks = [c for c in conditions if c.metric in RATE_METRICS]
    for mark in marks if on_marks else ():
        for cond in on_marks:
            if cond.matchers and not all(m.matches(mark.fields) for m in cond.matchers):
                continue
            key = tuple(mark.fields[g] for g in cond.group_by)
            group = groups[cond.name].get(key) or groups[cond.name].setdefault(key, _Group())
            if mark.kind == "started":
                group.started += 1
            else:
                group.ended_unstarted += 1
    return groups, kept_now


def evaluate(
    conditions: Sequence[Condition],
    state: ConditionState,
    calls: Mapping[str, CallState],
    events: Sequence[Event],
    now: float,
    delta: Delta | None = None,
) -> tuple[ConditionState, list[tuple[str, dict[str, object]]]]:
    """One successful poll: (new state, [(event type, data)...]) in condition order.
    With ``delta`` (what detection changed since the calls the stored counts were taken
    from), the counts follow it; without, every call is counted.

    An instance fires once it has held for ``for`` (measured from the first poll that
    saw it hold), and resolves once it has not held for ``keep_firing_for``. A group
    with no calls left (and no transitions in the window) no longer holds."""
    rates = [c for c in conditions if c.metric in RATE_METRICS]
    keep = sorted({f for c in rates for f in c.group_by} | {m.field for c in rates for m in c.matchers})
    marks = [m for m in state.marks if m.at > now - RATE_WINDOW] + (_marks(events, keep) if rates else [])
    measured, tallies = _measure(conditions, calls, marks, state.tallies, delta)
    instances = dict(state.instances)
    found: list[tuple[str, dict[str, object]]] = []
    for cond in conditions:
        present = measured[cond.name]
        if not cond.group_by:
            present.setdefault((), _Group())  # the whole source always has a value
        known = {k: i for k, i in instances.items() if i.condition == cond.name}
        keys = {instance_key(cond.name, dict(zip(cond.group_by, g, strict=True))): g for g in present}
        for key in sorted(set(keys) | set(known)):
            previous = known.get(key)
            group_values = keys.get(key)
            group = dict(zip(cond.group_by, group_values, strict=True)) if group_values is not None else previous.group  # type: ignore[union-attr]
            value = present[group_values].value(cond.metric, now) if group_values is not None else 0.0
            holding = group_values is not None and cond.holds(value)
            instance, event = _step(cond, previous or Instance(cond.name, group), holding, value, now)
            if instance is None:
                instances.pop(key, None)
            else:
                instances[key] = instance
            if event is not None:
                found.append(event)
    live = {c.name for c in conditions}
    for key, instance in sorted(instances.items()):
        if instance.condition in live:
            continue
        del instances[key]  # a condition removed from the config: what fired is resolved, not left open
        if instance.firing_since is not None:
            found.append(
                (
                    "condition.resolved",
                    {
                        "condition": instance.condition,
                        "metric": "",
                        "group": dict(instance.group),
                        "value": instance.value,
                        "firing_seconds": round(now - instance.firing_since, 3),
                        "reason": "removed from the configuration",
                    },
                )
            )
    return ConditionState(instances=instances, marks=marks if rates else [], tallies=tallies), found


def _step(
    cond: Condition, inst: Instance, holding: bool, value: float, now: float
) -> tuple[Instance | None, tuple[str, dict[str, object]] | None]:
    """One instance, one poll: (its next state, None when there is nothing to keep; an event)."""
    if holding:
        since = inst.holding_since if inst.holding_since is not None else now
        held = msgspec.structs.replace(inst, holding_since=since, last_held=now, value=value)
        if inst.firing_since is None and now - since >= cond.for_:
            fired = msgspec.structs.replace(held, firing_since=now)
            data: dict[str, object] = {
                "condition": cond.name,
                "metric": cond.metric,
                "direction": "above" if cond.above else "below",
                "group": dict(inst.group),
                "value": value,
                "threshold": cond.threshold,
                "since": iso(since),
                "for_seconds": round(now - since, 3),
            }
            return fired, ("condition.firing", data)
        return held, None
    if inst.firing_since is None:
        return None, None  # stopped holding before it fired: forgotten
    last = inst.last_held if inst.last_held is not None else now
    if now - last >= cond.keep_firing_for:
        data = {
            "condition": cond.name,
            "metric": cond.metric,
            "group": dict(inst.group),
            "value": value,
            "firing_seconds": round(now - inst.firing_since, 3),
            "reason": None,
        }
        return None, ("condition.resolved", data)
    return msgspec.structs.replace(inst, holding_since=None, value=value), None


def inhibited_by(state: ConditionState, conditions: Sequence[Condition], event: Event) -> str | None:
    """The firing condition that inhibits this event's deliveries, if one does: it lists
    the event's type and the event's call is in its group (and matches it)."""
    call = event.data.get("call")
    if not isinstance(call, dict):
        return None
    fields: dict[str, str] | None = None
    for cond in conditions:
        if event.type not in cond.inhibits:
            continue
        fields = fields or {name: field_text(call.get(name)) for name in CALL_FIELDS}
        if cond.matchers and not all(m.matches(fields) for m in cond.matchers):
            continue
        group = {g: fields[g] for g in cond.group_by}
        instance = state.instances.get(instance_key(cond.name, group))
        if instance is not None and instance.firing_since is not None:
            return cond.name
    return None


def apply(
    transition: Transition, conditions: Sequence[Condition], now: float, previous: Mapping[str, CallState] | None = None
) -> Transition:
    """Detection's transition with the conditions' events appended (numbered after its
    own) and their state in the new detection state, committed together."""
    if not conditions and not transition.state.conditions.instances:
        return transition
    state: DetectState = transition.state
    delta = Delta(previous, transition.changed, transition.removed) if previous is not None else None
    conditions_state, found = evaluate(conditions, state.conditions, state.calls, transition.events, now, delta)
    events = [
        Event(
            id=event_id(state.instance, state.next_seq + i),
            type=kind,
            detected_at=now,
            data={**data, "source": state.name},
        )
        for i, (kind, data) in enumerate(found)
    ]
    new = msgspec.structs.replace(state, conditions=conditions_state, next_seq=state.next_seq + len(events))
    return msgspec.structs.replace(transition, state=new, events=transition.events + events)
