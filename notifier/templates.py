"""Message text: sandboxed Jinja2 templates, defaults per event type, escaping per format.

Template text comes from the operator and is trusted; every value interpolated into
it comes from the API and is not. Values are escaped for the target's format as they
are printed (Jinja's ``finalize``), so an objective of ``<!channel>`` or
``[click](http://evil)`` shows as text and never pings or links.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

from jinja2 import DictLoader, StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.durations import format_duration
from notifier.model import CALL_EVENT_TYPES, Call, Event, call_payload, iso
from notifier.route import Rule

TEXT, MARKDOWN, SLACK, HTML = "text", "markdown", "slack", "html"

DEFAULT_TITLES = {
    "call.appeared": "Call {{ call.call_id | shorten(12) }} to {{ call.to }} appeared ({{ call.status }})",
    "call.started": "Call to {{ call.to }} started",
    "call.status_changed": "Call to {{ call.to }}: {{ event.previous_status }} → {{ call.status }}",
    "call.stuck_queued": "Call to {{ call.to }} stuck in queue for {{ event.queued_for_seconds | duration }}",
    "call.long_running": "Call to {{ call.to }} running for {{ event.in_progress_for_seconds | duration }}",
    "call.disappeared": "Call to {{ call.to }} ended{% if not event.was_started %} without ever starting{% endif %}",
    "source.unreachable": "Bland API unreachable since {{ event.since }}",
    "source.recovered": "Bland API reachable again after {{ event.downtime_seconds | duration }}",
    "condition.firing": "{{ event.condition }}: "
    + "{% include 'measure' %}"
    + "{% if event.for_seconds %} for {{ event.for_seconds | duration }}{% endif %}"
    " (threshold {{ event.threshold | number }})",
    "condition.resolved": "{{ event.condition }} resolved: " + "{% include 'measure' %}" + " now",
    "notifier.test": "bland-notifier test notification",
}
_CALL_ID_LINES = "Objective: {{ call.objective | shorten(160) }}\nCall ID: {{ call.call_id }}"
_CALL_LINES = (
    "To: {{ call.to }}  From: {{ call.from }}\n"
    "Status: {{ call.status }}{% if call.international %}  (international){% endif %}\n" + _CALL_ID_LINES
)
DEFAULT_BODIES = {
    "call.appeared": _CALL_LINES,
    "call.started": "Queued {{ event.queued_for_seconds | duration }}"
    "{% if event.was_stuck %} (was stuck){% endif %}\n" + _CALL_LINES,
    "call.status_changed": "Status changed from {{ event.previous_status }} to {{ call.status }}\n" + _CALL_LINES,
    "call.stuck_queued": "Queued {{ event.queued_for_seconds | duration }} "
    "(threshold {{ event.threshold_seconds | duration }})\n" + _CALL_LINES,
    "call.long_running": "In progress {{ event.in_progress_for_seconds | duration }}\n" + _CALL_LINES,
    # An ended call's status is its outcome (from the call's details), not the last one seen.
    "call.disappeared": "{% if event.outcome %}Outcome: {{ event.outcome.status or 'unknown' }}"
    "{% if event.outcome.call_length is number %}, call length {{ (event.outcome.call_length * 60) | duration }}"
    "{% endif %}{% if event.outcome.error_message %}, {{ event.outcome.error_message }}{% endif %}"
    "{% else %}Outcome: not asked (fetch_details = true asks Bland){% endif %}\n"
    "Last seen {{ event.last_status }}{% if not event.was_started %}, never started{% endif %}"
    "{% if event.was_stuck %}, was stuck{% endif %}; watched for {{ event.observed_seconds | duration }}\n"
    "To: {{ call.to }}  From: {{ call.from }}{% if call.international %}  (international){% endif %}\n"
    + _CALL_ID_LINES,
    "source.unreachable": "{{ event.consecutive_failures }} polls failed since {{ event.since }}.\n"
    "Last error: {{ event.last_error }}",
    "source.recovered": "Polling works again; the API was unreachable for {{ event.downtime_seconds | duration }}.",
    "condition.firing": "{{ event.metric | replace('_', ' ') }} is {{ event.direction }} {{ event.threshold | number }}"
    "{% for key, value in event.group.items() %} for {{ key }} {{ value or '(none)' }}{% endfor %}"
    " since {{ event.since }}.",
    "condition.resolved": "It fired for {{ event.firing_seconds | duration }}"
    "{% if event.reason %}; {{ event.reason }}{% endif %}.",
    "notifier.test": "{{ event.message }}",
}
#: How a condition's value reads: "412 calls queued on pathway_id pw-7", "oldest queued 9m 12s".
_MEASURE = (
    "{% if event.metric == 'oldest_queued_seconds' %}oldest queued {{ event.value | duration }}"
    "{% elif event.metric.endswith('_per_minute') %}{{ event.value | number }} "
    "{{ event.metric | replace('_per_minute', '') | replace('_', ' ') }} a minute"
    "{% else %}{{ event.value | number }} call{{ '' if event.value == 1 else 's' }} "
    "{{ event.metric | replace('_', ' ') }}{% endif %}"
    "{% for key, value in event.group.items() %} on {{ key }} {{ value or '(none)' }}{% endfor %}"
)


class _Undefined(StrictUndefined):
    """StrictUndefined that also fails on ``round``/``int``/``float``, naming the variable."""

    __round__ = __float__ = __int__ = __index__ = StrictUndefined._fail_with_undefined_error


class TemplateProblem(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.reason = key, reason


def number(value: Any) -> str:
    """412.0 -> 412, 0.4 -> 0.4: counts and thresholds as people write them."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def shorten(value: Any, width: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: max(width - 1, 1)].rstrip() + "…"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_MENTION = re.compile(r"@(?=(everyone|here|channel)\b)", re.IGNORECASE)
# Look-alikes for Slack's control characters: the text reads the same, but can no
# longer open a mention, a link or bold/italic/strike/code formatting.
_SLACK_MARKUP = str.maketrans({"<": "‹", ">": "›", "*": "∗", "_": "ˍ", "~": "∼", "`": "ˋ"})


def _escape_text(value: str) -> str:
    return _MENTION.sub("@\u200b", _CONTROL.sub("", value))


def _escape_markdown(value: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _escape_text(value))


def _escape_slack(value: str) -> str:
    # Slack (and Apprise's Slack plugin) turn "<!channel>", "!here>" and "<url|text>"
    # into pings and links even when & < > are entity-escaped, and Apprise rewrites a
    # markdown "[text](url)" into a Slack link: all of them are defused here.
    return _escape_text(value).translate(_SLACK_MARKUP).replace("](", "]\u200b(")


def _escape_html(value: str) -> str:
    from markupsafe import escape

    return str(escape(_escape_text(value)))


_ESCAPES: dict[str, Callable[[str], str]] = {
    TEXT: _escape_text,
    MARKDOWN: _escape_markdown,
    SLACK: _escape_slack,
    HTML: _escape_html,
}


def _finalizer(fmt: str) -> Callable[[Any], Any]:
    escape = _ESCAPES[fmt]

    def finalize(value: Any) -> Any:
        if value is None:
            return ""
        return escape(value if isinstance(value, str) else str(value))

    return finalize


@cache
def _environment(fmt: str) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=_Undefined,
        finalize=_finalizer(fmt),
        autoescape=False,
        keep_trailing_newline=False,
        loader=DictLoader({"measure": _MEASURE}),
    )
    env.filters["duration"] = format_duration
    env.filters["shorten"] = shorten
    env.filters["number"] = number
    return env


@lru_cache(maxsize=1024)
def _compile(source: str, fmt: str) -> Any:
    return _environment(fmt).from_string(source)


def template_context(event: Event) -> dict[str, Any]:
    data = {k: v for k, v in event.data.items() if k != "call"}
    context: dict[str, Any] = {
        "event": {"type": event.type, "id": event.id, "detected_at": iso(event.detected_at), **data},
    }
    if "call" in event.data:
        context["call"] = event.data["call"]
    return context


#: What a template can raise on data it was not written for (a null where it expected a number).
RENDER_ERRORS = (TemplateError, TypeError, ValueError, ArithmeticError)


def render(rule: Rule | None, event: Event, fmt: str = TEXT) -> tuple[str, str]:
    """(title, body) for one event; the rule's templates where set, else the defaults.

    A rule template that fails on this event is not retried (the data will not change):
    the default template is used instead, and the body says why, so the alert still
    goes out and the template gets fixed.
    """
    default_title = DEFAULT_TITLES.get(event.type, "{{ event.type }}")
    default_body = DEFAULT_BODIES.get(event.type, "")
    chosen = (rule.title if rule else None, rule.body if rule else None)
    return _render(rule, chosen, (default_title, default_body), template_context(event), fmt)


def _render(
    rule: Rule | None,
    chosen: tuple[str | None, str | None],
    defaults: tuple[str, str],
    context: dict[str, Any],
    fmt: str,
) -> tuple[str, str]:
    """(title, body) from the rule's templates, falling back to the defaults (with a
    note in the body) when the rule's fail on this data."""
    title_src, body_src = chosen[0] or defaults[0], chosen[1] or defaults[1]
    try:
        title = _compile(title_src, fmt).render(context)
        body = _compile(body_src, fmt).render(context)
    except RENDER_ERRORS as exc:
        if (title_src, body_src) == defaults:
            raise
        title = _compile(defaults[0], fmt).render(context)
        body = _compile(defaults[1], fmt).render(context)
        escape = _ESCAPES[fmt]
        name = escape(rule.name) if rule else ""
        note = f"(the template of rule {name} failed on this event: {escape(f'{type(exc).__name__}: {exc}')}; "
        body = f"{body.strip()}\n\n{note}this is the default template)"
    return " ".join(title.split()), body.strip()


DIGEST_LINES = 20
#: A digest's defaults: what the rule is about, the counts, one line per event (its
#: title, as the rule would have sent it alone), the first DIGEST_LINES of them.
DEFAULT_DIGEST_TITLE = (
    "{{ rule }}: {% for type, n in counts.items() %}{{ n }} {{ type }}{{ ', ' if not loop.last }}{% endfor %}"
)
DEFAULT_DIGEST_BODY = (
    "{% for title in titles[:" + str(DIGEST_LINES) + "] %}• {{ title }}\n{% endfor %}"
    "{% if titles | length > "
    + str(DIGEST_LINES)
    + " %}… and {{ titles | length - "
    + str(DIGEST_LINES)
    + " }} more{% endif %}"
)


def digest_context(rule: Rule | None, events: list[Event]) -> dict[str, Any]:
    """What digest templates see: ``events`` (each as a single event's template sees
    it), ``counts`` by type, ``titles`` (each event's title), ``rule`` (its name)."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    return {
        "rule": rule.name if rule else "bland-notifier",
        "events": [template_context(event) for event in events],
        "counts": counts,
        "titles": [render(rule, event, TEXT)[0] for event in events],
    }


def render_digest(rule: Rule | None, events: list[Event], fmt: str = TEXT) -> tuple[str, str]:
    """One message for many events of one poll (``digest_title``/``digest_body``)."""
    chosen = (rule.digest_title if rule else None, rule.digest_body if rule else None)
    return _render(rule, chosen, (DEFAULT_DIGEST_TITLE, DEFAULT_DIGEST_BODY), digest_context(rule, events), fmt)


_SAMPLE_CALL = Call(
    call_id="c0ffee00-0000-4000-8000-000000000001",
    user_id="user-1",
    from_="+14155550100",
    to="+13105550123",
    objective="Confirm the appointment on Friday at 10am",
    pathway_id="pw-1",
    start_time="2026-01-01T12:00:42Z",
    international="false",
    status="IN_PROGRESS",
    timestamp="1767268800000",
)
_SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "call.appeared": {},
    "call.started": {"queued_for_seconds": 42.0, "was_stuck": False},
    "call.status_changed": {"previous_status": "QUEUED"},
    "call.stuck_queued": {"queued_for_seconds": 252.0, "threshold_seconds": 120.0},
    "call.long_running": {"in_progress_for_seconds": 1900.0},
    "call.disappeared": {
        "was_started": True,
        "was_stuck": False,
        "last_status": "IN_PROGRESS",
        "observed_seconds": 312.0,
        "outcome": {
            "status": "completed",
            "completed": True,
            "call_length": 4.2,
            "answered_by": "human",
            "call_ended_by": "ASSISTANT",
            "error_message": None,
        },
    },
    "source.unreachable": {
        "since": "2026-01-01T12:00:00.000Z",
        "consecutive_failures": 12,
        "last_error": "GET /v1/calls/active: HTTP 503 Service Unavailable",
    },
    "source.recovered": {"downtime_seconds": 185.0},
    "condition.firing": {
        "condition": "queue backlog",
        "metric": "queued",
        "direction": "above",
        "group": {"pathway_id": "pw-7"},
        "value": 412.0,
        "threshold": 200.0,
        "since": "2026-01-01T11:54:00.000Z",
        "for_seconds": 372.0,
    },
    "condition.resolved": {
        "condition": "queue backlog",
        "metric": "queued",
        "group": {"pathway_id": "pw-7"},
        "value": 12.0,
        "firing_seconds": 540.0,
        "reason": None,
    },
}


#: The data fields each type may carry as null (not known): ``check`` renders with them null too.
_NULLABLE: dict[str, tuple[str, ...]] = {
    "call.started": ("queued_for_seconds",),
    "call.disappeared": ("observed_seconds", "outcome"),
    "source.recovered": ("downtime_seconds",),
}
#: ... and the call's fields that may be null.
_NULLABLE_CALL = ("start_time", "international", "created_at")


def sample_event(event_type: str, nulls: bool = False) -> Event:
    """A realistic event of each type, for ``check`` and ``test``; with ``nulls``, every
    field that can be null in a real event is."""
    data = dict(_SAMPLE_DATA[event_type])
    if event_type in CALL_EVENT_TYPES:
        payload = call_payload(_SAMPLE_CALL)
        if nulls:
            payload.update(dict.fromkeys(_NULLABLE_CALL))
        data = {"call": payload, **data}
    if nulls:
        data.update(dict.fromkeys(_NULLABLE.get(event_type, ())))
    data["source"] = "default"
    return Event(
        id="evt_sample_0000000001",
        type=event_type,
        detected_at=1767268852.0,
        data=data,
        call_id=_SAMPLE_CALL.call_id if event_type in CALL_EVENT_TYPES else None,
    )


def _undefined(exc: UndefinedError, context: dict[str, Any]) -> str:
    """Jinja's "'dict object' has no attribute 'too'", with what there is instead."""
    missing = re.search(r"has no attribute '([^']*)'", exc.message or "")
    if not missing:
        return f"{exc.message} (the names are {', '.join(context)})"
    known = []
    for name, value in context.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            inner = ", ".join(f"{key}.{{{', '.join(sub)}}}" for key, sub in value[0].items() if isinstance(sub, dict))
            known.append(f"each of {name} has {inner}")
        elif isinstance(value, dict) and name != "counts":
            known.append(f"{name} has {', '.join(value)}")
    return f"no field {missing.group(1)!r} ({'; '.join(known)})"


def check_rule_templates(rule: Rule) -> None:
    """Render the rule's templates against a sample of each type it listens to (and
    its digest templates against a digest of all of them)."""
    for key, source in (("title", rule.title), ("body", rule.body)):
        if not source:
            continue
        _compiled(key, source)
        for event_type in rule.event_types:
            for nulls in (False, True):
                when = f"for {event_type}" + (" with its unknown values null" if nulls else "")
                _try(key, source, when, template_context(sample_event(event_type, nulls)))
    for key, source in (("digest_title", rule.digest_title), ("digest_body", rule.digest_body)):
        if not source:
            continue
        _compiled(key, source)
        for nulls in (False, True):
            samples = [sample_event(event_type, nulls) for event_type in rule.event_types]
            when = f"for a digest of {', '.join(rule.event_types)}" + (" with unknown values null" if nulls else "")
            _try(key, source, when, digest_context(rule, samples))


def _compiled(key: str, source: str) -> None:
    try:
        _compile(source, TEXT)
    except TemplateError as exc:
        raise TemplateProblem(key, f"template does not compile: {exc}") from None


def _try(key: str, source: str, when: str, context: dict[str, Any]) -> None:
    try:
        _compile(source, TEXT).render(context)
    except UndefinedError as exc:
        raise TemplateProblem(key, f"{when}: {_undefined(exc, context)}") from None
    except RENDER_ERRORS as exc:
        raise TemplateProblem(key, f"{when}: {type(exc).__name__}: {exc}") from None
