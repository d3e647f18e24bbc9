"""Routing: which (rule, target) pairs an event goes to, and how a poll's events become
deliveries. Pure functions: rules are parsed once at config load, routing does no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from notifier.model import CALL_EVENT_TYPES, EVENT_TYPES, Event
from notifier.timeintervals import NEVER_MUTED, Muting

if TYPE_CHECKING:
    from notifier.quiet import Verdict

#: Fields every call event has (SPEC, Matchers); every event also has ``type`` and ``source``.
CALL_FIELDS = ("call_id", "user_id", "from", "to", "objective", "pathway_id", "status", "international")
#: The scalar data fields of each event type, as matchers and templates see them.
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "call.appeared": (),
    "call.started": ("queued_for_seconds", "was_stuck"),
    "call.status_changed": ("previous_status",),
    "call.stuck_queued": ("queued_for_seconds", "threshold_seconds"),
    "call.long_running": ("in_progress_for_seconds",),
    "call.disappeared": ("was_started", "was_stuck", "last_status", "observed_seconds"),
    "source.unreachable": ("since", "consecutive_failures", "last_error"),
    "source.recovered": ("downtime_seconds",),
    "condition.firing": ("condition", "metric", "direction", "value", "threshold", "since", "for_seconds"),
    "condition.resolved": ("condition", "metric", "value", "firing_seconds", "reason"),
}

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


class RuleError(ValueError):
    """A rule that cannot work; ``key`` is the key path below the rule (e.g. ``match[0]``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Matcher:
    """``FIELD OP VALUE`` as in Alertmanager; regexes are fully anchored."""

    field: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, fields: Mapping[str, str]) -> bool:
        actual = fields.get(self.field, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self.regex is not None and self.regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.field} {self.op} "{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher; raise ValueError saying what is wrong."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not FIELD OP VALUE with OP one of =, !=, =~, !~")
    name, op, raw = found.groups()
    if raw[:1] in ("=", "~", "!"):
        raise ValueError(
            f"{text!r}: the value starts with {raw[0]!r} (a typo in the operator?); quote the value if it is meant"
        )
    value = _unquote(raw)
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        except (RecursionError, OverflowError, MemoryError):  # nested past what the compiler takes
            raise ValueError(f"regular expression too complex: {value[:60]!r}...") from None
    return Matcher(field=name, op=op, value=value, regex=regex)


def _unquote(raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    if len(raw) < 2 or not raw.endswith('"'):
        raise ValueError(f"unterminated quoted value {raw}")
    out, body, i = [], raw[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] in '"\\':
            out.append(body[i + 1])  # \" and \\ are the only escapes; other backslashes
            i += 2  # stay as written, so regexes like "\+1310.*" read naturally
            continue
        if char == '"':
            raise ValueError(f"unescaped quote inside {raw}")
        out.append(char)
        i += 1
    return "".join(out)


def expand_event_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """``call.*`` / ``*`` -> the event types they cover; unknown names are errors."""
    types: list[str] = []
    for index, pattern in enumerate(patterns):
        hits = [t for t in EVENT_TYPES if fnmatch.fnmatchcase(t, pattern)]
        if not hits:
            raise RuleError(f"events[{index}]", f"{pattern!r} matches no event type; known: {', '.join(EVENT_TYPES)}")
        types.extend(t for t in hits if t not in types)
    return tuple(types)


def fields_of(event_type: str) -> tuple[str, ...]:
    """A condition's event has its group's call fields (``pathway_id = "pw-7"``)."""
    grouped = event_type in CALL_EVENT_TYPES or event_type.startswith("condition.")
    base = ("type", "source") + (CALL_FIELDS if grouped else ())
    return base + DATA_FIELDS[event_type]


@dataclass(frozen=True)
class Rule:
    name: str
    event_types: tuple[str, ...]
    matchers: tuple[Matcher, ...]
    targets: tuple[str, ...]
    title: str | None = None
    body: str | None = None
    digest_after: int = 5
    digest_title: str | None = None
    digest_body: str | None = None
    muting: Muting = NEVER_MUTED
    when_muted: str = "drop"  # drop | defer
    _types: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_types", frozenset(self.event_types))

    def listens_to(self, event_type: str) -> bool:
        return event_type in self._types

    def fits(self, event_type: str, fields: Mapping[str, str]) -> bool:
        return event_type in self._types and all(m.matches(fields) for m in self.matchers)


def compile_rule(
    *,
    name: str,
    events: Sequence[str],
    match: Sequence[str],
    targets: Sequence[str],
    title: str | None = None,
    body: str | None = None,
    digest_after: int = 5,
    digest_title: str | None = None,
    digest_body: str | None = None,
    muting: Muting = NEVER_MUTED,
    when_muted: str = "drop",
) -> Rule:
    """Validate and compile one ``[[rules]]`` entry; errors carry the key below the rule."""
    if not events:
        raise RuleError("events", "must list at least one event type")
    types = expand_event_patterns(events)
    known = {f for t in types for f in fields_of(t)}
    matchers = []
    for index, text in enumerate(match):
        try:
            matcher = parse_matcher(text)
        except ValueError as exc:
            raise RuleError(f"match[{index}]", str(exc)) from None
        if matcher.field not in known:
            raise RuleError(
                f"match[{index}]",
                f"field {matcher.field!r} exists on none of this rule's events "
                f"({', '.join(types)}); fields there: {', '.join(sorted(known))}",
            )
        matchers.append(matcher)
    if digest_after < 0:
        raise RuleError("digest_after", "must be 0 (off) or more")
    if when_muted not in ("drop", "defer"):
        raise RuleError("when_muted", f'must be "drop" or "defer", not {when_muted!r}')
    return Rule(
        name,
        types,
        tuple(matchers),
        tuple(targets),
        title,
        body,
        digest_after,
        digest_title,
        digest_body,
        muting,
        when_muted,
    )


def field_text(value: Any) -> str:
    """A field's value as matchers compare it (``true``/``false``, ``130`` for 130.0)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def event_fields(event: Event) -> dict[str, str]:
    """The strings matchers compare: call fields, then the event's scalar data fields."""
    fields = {"type": event.type}
    call = event.data.get("call")
    if isinstance(call, dict):
        for name in CALL_FIELDS:
            fields[name] = field_text(call.get(name))
    group = event.data.get("group")
    if isinstance(group, dict):  # a condition's group: the call fields it was grouped by
        for name, value in group.items():
            fields[name] = field_text(value)
    for name, value in event.data.items():
        if not isinstance(value, (dict, list)):  # scalars only: not ``call``, not ``outcome``
            fields[name] = field_text(value)
    return fields


@dataclass(frozen=True)
class Route:
    rule: Rule
    target: str


def route(event: Event, rules: Sequence[Rule]) -> list[Route]:
    """Every fitting rule fires; an event reaches each target at most once (first rule wins)."""
    fields: dict[str, str] = {}
    routes: list[Route] = []
    taken: set[str] = set()
    for rule in rules:
        if not rule.listens_to(event.type):
            continue
        if rule.matchers and not fields:
            fields = event_fields(event)  # only built when some rule has to look
        if rule.fits(event.type, fields):
            for target in rule.targets:
                if target not in taken:
                    taken.add(target)
                    routes.append(Route(rule, target))
    return routes


@dataclass(frozen=True)
class PlannedDelivery:
    """One message to send: a single event, or a digest of several (Apprise only).
    A quieted one is recorded ``silenced`` or ``muted`` (and never sent), or held
    ``pending`` until ``not_before``, with what quieted it in ``quieted_by``."""

    target: str
    rule: str
    event_ids: tuple[str, ...]
    status: str = "pending"
    quieted_by: str | None = None
    not_before: float | None = None

    @property
    def is_digest(self) -> bool:
        return len(self.event_ids) > 1


#: Whether one hop (rule, target, event) goes out now: see ``notifier.quiet.judge``.
Judge = Callable[[Rule, str, Event], "Verdict"]


def plan_deliveries(
    events: Iterable[Event], rules: Sequence[Rule], digestible: frozenset[str], judge: Judge | None = None
) -> list[PlannedDelivery]:
    """The deliveries one poll's events cause, in event order.

    ``digestible`` names the targets that may receive a digest (Apprise targets; a
    webhook consumer always gets one request per event). More than ``digest_after``
    events of one rule for one such target become a single digest delivery. ``judge``
    quiets hops first: only what would go out now is digested; a held delivery waits
    alone, and is digested with its like when its mute ends.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str]] = []
    rule_by_name = {rule.name: rule for rule in rules}
    planned: list[PlannedDelivery] = []
    for event in events:
        for hop in route(event, rules):
            if judge is not None:
                verdict = judge(hop.rule, hop.target, event)
                if not verdict.sends:
                    status = "pending" if verdict.action == "deferred" else verdict.action
                    planned.append(
                        PlannedDelivery(hop.target, hop.rule.name, (event.id,), status, verdict.reason, verdict.until)
                    )
                    continue
            key = (hop.rule.name, hop.target)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(event.id)
    for rule_name, target in order:
        ids = groups[(rule_name, target)]
        limit = rule_by_name[rule_name].digest_after
        if target in digestible and limit and len(ids) > limit:
            planned.append(PlannedDelivery(target, rule_name, tuple(ids)))
        else:
            planned.extend(PlannedDelivery(target, rule_name, (eid,)) for eid in ids)
    planned.sort(key=lambda p: p.event_ids[0])
    return planned
