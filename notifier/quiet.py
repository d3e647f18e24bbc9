"""Quieting: whether a delivery goes out now, or is silenced, muted or held back.

A delivery is one event for one target through one rule. It is judged when it is
planned and again when it becomes due, so that a silence made during a target's long
outage also covers what is queued, and a mute that a reload extended still holds.
Pure: silences, rules and an instant in, a verdict out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from notifier.model import EVENT_TYPES, Event
from notifier.route import Matcher, Rule, event_fields, fields_of, parse_matcher

#: What a silence may match on: every field of any event, and the delivery's rule and target.
SILENCE_FIELDS = tuple(dict.fromkeys(f for t in EVENT_TYPES for f in fields_of(t))) + ("rule", "target")


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str
    author: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, fields: Mapping[str, str]) -> bool:
        return all(m.matches(fields) for m in self.matchers)


def parse_silence_matchers(texts: Sequence[str]) -> tuple[Matcher, ...]:
    """The rule matcher syntax, over event fields plus ``rule`` and ``target``. A field no
    event has is an error naming it: a typo must not silence everything or nothing."""
    if not texts:
        raise ValueError("a silence needs at least one matcher, e.g. 'rule = \"stuck calls\"'")
    found = []
    for text in texts:
        matcher = parse_matcher(text)
        if matcher.field not in SILENCE_FIELDS:
            raise ValueError(f"{text!r}: no event has a field {matcher.field!r}; fields: {', '.join(SILENCE_FIELDS)}")
        found.append(matcher)
    return tuple(found)


def silence_matchers(texts: Sequence[str]) -> tuple[Matcher, ...]:
    """Matchers a silence may have (the console checks them as they are typed)."""
    matchers = parse_silence_matchers(texts)
    if all(m.matches({}) for m in matchers):
        raise ValueError("these matchers hold for every delivery; silence something in particular")
    return matchers


#: The longest a silence may last: a forgotten one must end some day.
LONGEST_SILENCE = 100 * 366 * 86400


def new_silence(
    silence_id: str, texts: Sequence[str], starts: float, ends: float, comment: str, author: str, now: float
) -> Silence:
    """A silence as ``silence add`` and the API make it, or ValueError saying what is
    wrong: one that could never act, or would quiet everything, is refused."""
    matchers = silence_matchers(texts)
    if ends <= max(starts, now):
        raise ValueError("the silence would end before it starts (or in the past)")
    if ends > now + LONGEST_SILENCE:
        raise ValueError("a silence ends within a hundred years (expire it sooner if need be)")
    if not any(c.isalnum() for c in comment):
        raise ValueError("comment: say why, for whoever finds the silence")
    return Silence(silence_id, matchers, starts, ends, comment.strip(), author.strip(), now)


SEND, SILENCED, INHIBITED, MUTED, DEFERRED = "send", "silenced", "inhibited", "muted", "deferred"


@dataclass(frozen=True)
class Verdict:
    action: str  # send | silenced | inhibited | muted | deferred
    reason: str | None = None  # the silence id, or the interval that mutes
    until: float | None = None  # deferred: when the mute ends

    @property
    def sends(self) -> bool:
        return self.action == SEND


GO = Verdict(SEND)


def judge(
    rule: Rule | None,
    target: str,
    fields: Mapping[str, str],
    now: float,
    silences: Sequence[Silence],
    inhibited_by: str | None = None,
    muting: dict[str, Verdict] | None = None,
) -> Verdict:
    """Silences first (they are someone's explicit decision), then a firing condition
    that inhibits the event (``inhibited_by``, its name), then the rule's mute.
    ``rule`` is None when the delivery's rule is no longer configured: only silences apply."""
    if silences:
        seen = {**fields, "rule": rule.name if rule else "", "target": target}
        for silence in silences:
            if silence.active(now) and silence.covers(seen):
                return Verdict(SILENCED, silence.id)
    if inhibited_by is not None:
        return Verdict(INHIBITED, inhibited_by)
    if rule is None or not rule.muting:
        return GO
    if muting is None:
        return _mute(rule, now)
    if rule.name not in muting:
        muting[rule.name] = _mute(rule, now)
    return muting[rule.name]


def _mute(rule: Rule, now: float) -> Verdict:
    muted = rule.muting.muted_by(now)
    if muted is None:
        return GO
    if rule.when_muted == "defer":
        until = rule.muting.until(now)
        if until is not None:
            return Verdict(DEFERRED, muted, until)
        muted += " (no end within 400 days)"
    return Verdict(MUTED, muted)


def judge_hops(
    now: float, silences: Sequence[Silence], inhibit: Callable[[Event], str | None] | None = None
) -> Callable[[Rule | None, str, Event], Verdict]:
    """``judge`` for ``plan_deliveries``: one poll's hops, at one instant. Fields are
    built only when a silence has to look, once per event; ``inhibit`` names the firing
    condition that inhibits an event, if any."""
    active = [s for s in silences if s.active(now)]
    cache: dict[str, dict[str, str]] = {}
    muting: dict[str, Verdict] = {}  # a rule's mute is one verdict per instant: computed once

    def one(rule: Rule | None, target: str, event: Event) -> Verdict:
        fields = cache.get(event.id) if active else {}
        if fields is None:
            fields = cache[event.id] = event_fields(event)
        return judge(rule, target, fields, now, active, inhibit(event) if inhibit is not None else None, muting)

    return one
