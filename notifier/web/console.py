"""The console at ``/``: one server-rendered page (Jinja2, autoescaped: a value from
Bland is always text), refreshed in place by ``static/console.js``.

Filters and paging are query parameters, so every view is a link and the page works
without JavaScript; the script only refreshes it and sends the changes to the API.
"""

from __future__ import annotations

import time
from functools import cache
from importlib.resources import files
from typing import Annotated, Any

import jinja2
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from notifier.durations import format_duration
from notifier.model import EVENT_TYPES, QUEUED, Event, parse_iso
from notifier.route import Matcher
from notifier.templates import number
from notifier.views import call_view, delivery_view, silence_view
from notifier.web.api import DELIVERY_STATUSES, WebContext, get_status

PAGE = 25


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("notifier.web") / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = lambda seconds: format_duration(seconds) if seconds is not None else "-"
    env.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    env.filters["stamp"] = _stamp
    return env


def like_this(event: Event) -> list[str]:
    """Matchers for "silence like this": the event's type and what it is about."""
    pairs: list[tuple[str, str]] = [("type", event.type)]
    if event.call_id and "\n" not in event.call_id:  # (a matcher is one line of the form)
        pairs.append(("call_id", event.call_id))
    if event.type.startswith("condition."):
        pairs.append(("condition", str(event.data.get("condition", ""))))
        pairs.extend((k, str(v)) for k, v in dict(event.data.get("group") or {}).items())
    return [str(Matcher(field=k, op="=", value=v)) for k, v in pairs]


def summary(event: Event) -> str:
    """One line on what happened, from the event's own fields."""
    data = event.data
    if event.type.startswith("condition."):
        group = " ".join(f"{k}={v}" for k, v in dict(data.get("group") or {}).items())
        text = f"{data.get('condition')} {group} value {number(data.get('value'))}"
        if data.get("threshold") is not None:
            text += f" (threshold {number(data['threshold'])})"
        return text
    if event.type.startswith("source."):
        return str(data.get("last_error") or data.get("reason") or "")
    call = data.get("call") or {}
    parts = [f"to {call.get('to')}" if call.get("to") else "", str(call.get("status") or "")]
    if call.get("pathway_id"):
        parts.append(f"pathway {call['pathway_id']}")
    return " ".join(p for p in parts if p)


def _stamp(text: str | None) -> str:
    """An ISO time as the console shows times: UTC to the second, and how long ago (or until)."""
    when = parse_iso(text) if text else None
    if when is None:
        return "never"
    ago = round(time.time() - when)
    relative = f"{format_duration(ago)} ago" if ago >= 0 else f"in {format_duration(-ago)}"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))} ({relative})"


@get("/", sync_to_thread=True, include_in_schema=False)
def console(
    context: NamedDependency[WebContext],
    calls_status: Annotated[str | None, QueryParameter(max_length=64)] = None,
    calls_offset: Annotated[int, QueryParameter(ge=0, le=10**9)] = 0,
    event_type: Annotated[str | None, QueryParameter(name="type", max_length=64)] = None,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    events_offset: Annotated[int, QueryParameter(ge=0, le=10**9)] = 0,
    delivery_status: Annotated[str | None, QueryParameter(max_length=32)] = None,
    deliveries_offset: Annotated[int, QueryParameter(ge=0, le=10**9)] = 0,
) -> Response[str]:
    store, now = context.store, context.clock()
    status = get_status.fn(context)
    counts: dict[str, int] = {}
    for source in status.sources:
        for call_status, count in source.active_calls.items():
            counts[call_status] = counts.get(call_status, 0) + count
    if calls_status is None:  # the queue when there is one; "all" shows every call
        calls_status = QUEUED if counts.get(QUEUED) else "all"
    shown_calls = None if calls_status == "all" else calls_status
    by_source = {source.name: source.active_calls for source in status.sources}  # read once a refresh
    total, calls = store.active_calls(status=shown_calls, limit=PAGE, offset=calls_offset, counts=by_source)
    types = [event_type] if event_type in EVENT_TYPES else []
    events = list(reversed(store.sourced_events(types=types, search=q or None, limit=PAGE + 1, offset=events_offset)))
    shown_status = delivery_status if delivery_status in DELIVERY_STATUSES else None
    deliveries = list(reversed(store.deliveries(status=shown_status, limit=PAGE + 1, offset=deliveries_offset)))
    html = (
        _environment()
        .get_template("console.html")
        .render(
            status=status,
            read_only_reason=status.read_only_reason,
            counts=dict(sorted(counts.items())),
            calls=[call_view(name, cs, now) for name, cs in calls],
            calls_total=total,
            calls_status=shown_calls or "",
            calls_offset=calls_offset,
            events=[
                {"event": e, "source": name, "summary": summary(e), "like": like_this(e)} for name, e in events[:PAGE]
            ],
            events_more=len(events) > PAGE,
            event_types=EVENT_TYPES,
            event_type=event_type if types else "",
            q=q or "",
            events_offset=events_offset,
            deliveries=[delivery_view(d, []) for d in deliveries[:PAGE]],
            deliveries_more=len(deliveries) > PAGE,
            delivery_statuses=DELIVERY_STATUSES,
            delivery_status=shown_status or "",
            deliveries_offset=deliveries_offset,
            silences=[silence_view(s, now) for s in store.silences(now)],
            page=PAGE,
            link=_linker(
                calls_status=calls_status,
                calls_offset=calls_offset,
                type=event_type if types else "",
                q=q or "",
                events_offset=events_offset,
                delivery_status=shown_status or "",
                deliveries_offset=deliveries_offset,
            ),
        )
    )
    return Response(html, media_type="text/html", headers={"Cache-Control": "no-store"})


def _linker(**current: Any) -> Any:
    """``link(events_offset=50)``: this view's URL with some parameters changed (a
    changed filter starts its list from the top)."""
    from urllib.parse import urlencode

    resets = {"calls_status": "calls_offset", "type": "events_offset", "q": "events_offset"}
    resets["delivery_status"] = "deliveries_offset"

    def link(**changes: Any) -> str:
        params = {**current, **changes}
        for name, offset in resets.items():
            if name in changes and offset not in changes:
                params[offset] = 0
        return "/?" + urlencode({k: v for k, v in params.items() if v not in ("", 0, None)})

    return link
