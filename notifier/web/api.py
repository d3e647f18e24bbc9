"""The JSON API under ``/api/v1/``: typed handlers, from which Litestar generates the
OpenAPI 3.1 document at ``/api/v1/openapi.json``.

Reads come from the store, so a standby answers them as well as the leader. Changes
(silences, redelivery) need ``authorization: Bearer <[http] token>`` and a leader: a
standby's view of the lease may be stale, and one writer at a time keeps it simple.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter

from notifier.durations import parse_duration
from notifier.listener import Standing
from notifier.model import EVENT_TYPES
from notifier.quiet import new_silence, silence_matchers
from notifier.store import Store
from notifier.views import (
    CallView,
    DeliveryView,
    EventView,
    SilenceView,
    StatusReport,
    call_view,
    delivery_view,
    event_view,
    silence_view,
    status_report,
)

DELIVERY_STATUSES = ("pending", "sent", "dead", "silenced", "muted", "inhibited")
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]  # an enum in the schema
PAGE_MAX = 1000


@dataclass(frozen=True)
class WebContext:
    """What the web handlers need from the daemon: its store, its standing, the token."""

    store: Store
    standing: Callable[[], Standing]
    clock: Callable[[], float]
    token: str | None = None  # [http] token: None, changes are off

    def read_only_reason(self) -> str | None:
        """Why this daemon takes no changes, or None when it does (given the token)."""
        if self.token is None:
            return "changes are off: no [http] token is configured"
        standing = self.standing()
        if standing.role != "leader":
            leader = f" ({standing.leader})" if standing.leader else ""
            return f"this daemon is a standby: make changes on the leader{leader}"
        return None


class Problem(msgspec.Struct):
    """Every error: the HTTP status and a reason a person can act on."""

    status_code: int
    detail: str
    extra: Any = None


class DaemonStatus(StatusReport, frozen=True):
    """The store's status, and this daemon's role (leader or standby) and whether it takes changes."""

    role: str = "standby"
    read_only_reason: str | None = None


class CallsPage(msgspec.Struct, frozen=True):
    total: int  # calls matching the filter
    offset: int
    limit: int
    items: list[CallView]  # the longest queued first


class EventsPage(msgspec.Struct, frozen=True):
    offset: int
    limit: int
    items: list[EventView]  # newest first


class DeliveriesPage(msgspec.Struct, frozen=True):
    offset: int
    limit: int
    items: list[DeliveryView]  # newest first


def _text(longest: int) -> Any:
    """A string of at most ``longest`` characters and no NUL (which PostgreSQL cannot store)."""
    return Annotated[str, msgspec.Meta(max_length=longest, pattern="^[^\x00]*$")]


class NewSilence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Matchers as in ``notifier silence add``; ``duration`` ("2h") or ``ends_at``."""

    matchers: Annotated[list[_text(1000)], msgspec.Meta(min_length=1, max_length=32)]  # type: ignore[valid-type]
    comment: _text(2000)  # type: ignore[valid-type]
    author: _text(200) = ""  # type: ignore[valid-type]
    duration: _text(64) | None = None  # type: ignore[valid-type]
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class MatcherCheck(msgspec.Struct, frozen=True):
    """Whether matchers would make a silence: as written back, or why not."""

    ok: bool
    matchers: list[str]
    error: str | None = None


BEARER = [{"bearer": []}]  # the OpenAPI security requirement of every change
Limit = Annotated[int, QueryParameter(ge=1, le=PAGE_MAX, description="items per page")]
Offset = Annotated[int, QueryParameter(ge=0, le=10**9, description="items to skip")]
_PROBLEM = {
    400: ResponseSpec(Problem, description="malformed input: the reason is in detail and extra"),
    421: ResponseSpec(Problem, description="a loopback listener serves loopback host names only"),
    503: ResponseSpec(Problem, description="the store cannot answer now, or the console is busy: see detail"),
}
_CHANGE = {
    **_PROBLEM,
    401: ResponseSpec(Problem, description="the bearer token is missing or wrong"),
    403: ResponseSpec(Problem, description="no [http] token is configured, or this daemon is a standby"),
}


def _context(connection: ASGIConnection[Any, Any, Any, Any]) -> WebContext:
    context: WebContext = connection.app.state.context
    return context


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard on every change: the token compared in constant time, then the role."""
    context = _context(connection)
    if context.token is None:
        raise PermissionDeniedException(detail=context.read_only_reason())
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), context.token.encode()):
        raise NotAuthorizedException(
            detail="send authorization: Bearer <token> (the [http] token)",
            headers={"WWW-Authenticate": 'Bearer realm="bland-notifier"'},
        )
    reason = context.read_only_reason()
    if reason is not None:
        raise PermissionDeniedException(detail=reason)


def _timestamp(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _unprocessable(detail: str) -> ClientException:
    """Well-formed, but not a silence (a matcher that does not parse, a time in the past):
    what no schema can say is 422, while malformed input is Litestar's 400."""
    return ClientException(detail=detail, status_code=422)


@get("/status", sync_to_thread=True, responses=_PROBLEM)
def get_status(context: NamedDependency[WebContext]) -> DaemonStatus:
    """Who leads, each source's health and active calls by status, firing conditions, the queue."""
    report = status_report(context.store, context.clock())
    reason = context.read_only_reason()
    return DaemonStatus(**msgspec.structs.asdict(report), role=context.standing().role, read_only_reason=reason)


@get("/calls", sync_to_thread=True, responses=_PROBLEM)
def get_calls(
    context: NamedDependency[WebContext],
    status: Annotated[str | None, QueryParameter(max_length=64, description="QUEUED, IN_PROGRESS, ...")] = None,
    source: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> CallsPage:
    """Active calls as the last committed poll saw them, the longest queued first."""
    total, page = context.store.active_calls(source=source, status=status, limit=limit, offset=offset)
    now = context.clock()
    return CallsPage(total, offset, limit, [call_view(name, cs, now) for name, cs in page])


@get("/events", sync_to_thread=True, responses=_PROBLEM)
def get_events(
    context: NamedDependency[WebContext],
    event_type: Annotated[
        list[EventType] | None, QueryParameter(name="type", description="event types (repeat for several)")
    ] = None,
    since: Annotated[
        datetime | None, QueryParameter(description="detected at or after (ISO 8601, UTC by default)")
    ] = None,
    source: Annotated[str | None, QueryParameter(max_length=200)] = None,
    call_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
    q: Annotated[str | None, QueryParameter(max_length=200, description="text anywhere in the event, any case")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> EventsPage:
    """Recorded events, newest first; the items are webhook bodies with their source."""
    found = context.store.sourced_events(
        since=_timestamp(since) if since is not None else None,
        types=event_type or (),
        call_id=call_id,
        source=source,
        limit=limit,
        offset=offset,
        search=q or None,
    )
    return EventsPage(offset, limit, [event_view(e, name) for name, e in reversed(found)])


@get("/deliveries", sync_to_thread=True, responses=_PROBLEM)
def get_deliveries(
    context: NamedDependency[WebContext],
    status: FromQuery[Literal["pending", "sent", "dead", "silenced", "muted", "inhibited"] | None] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DeliveriesPage:
    """Deliveries, newest first, each with its attempts."""
    found = list(reversed(context.store.deliveries(status=status, limit=limit, offset=offset)))
    history = context.store.attempts_of([d.id for d in found])
    return DeliveriesPage(offset, limit, [delivery_view(d, history[d.id]) for d in found])


@post(
    "/deliveries/{delivery_id:int}/redeliver",
    sync_to_thread=True,
    guards=[require_token],
    security=BEARER,
    status_code=200,
    responses={
        **_CHANGE,
        404: ResponseSpec(Problem, description="no such delivery"),
        409: ResponseSpec(Problem, description="the delivery is not dead"),
    },
)
def redeliver(
    context: NamedDependency[WebContext],
    delivery_id: Annotated[int, PathParameter(ge=1, le=2**62, description="a delivery id")],
) -> DeliveryView:
    """Queue a dead delivery again, from a fresh start (its backoff and give-up count anew)."""
    if not context.store.redeliver(context.clock(), delivery_id=delivery_id):
        found = context.store.delivery(delivery_id)
        if found is None:
            raise NotFoundException(detail=f"no delivery {delivery_id}")
        raise ClientException(detail=f"delivery {delivery_id} is {found.status}, not dead", status_code=409)
    again = context.store.delivery(delivery_id)
    assert again is not None
    return delivery_view(again, context.store.attempts_of([delivery_id])[delivery_id])


@get("/silences", sync_to_thread=True, responses=_PROBLEM)
def get_silences(
    context: NamedDependency[WebContext],
    all_: Annotated[bool, QueryParameter(name="all", description="expired ones too")] = False,
) -> list[SilenceView]:
    """Active and pending silences, oldest first (``all=true``: expired ones too)."""
    now = context.clock()
    return [silence_view(s, now) for s in context.store.silences(None if all_ else now)]


@get("/matchers", sync_to_thread=True, responses=_PROBLEM)
def check_matchers(
    matcher: Annotated[list[Annotated[str, msgspec.Meta(max_length=1000)]], QueryParameter(description="one or more")],
) -> MatcherCheck:
    """Whether these matchers would make a silence, with the same parser ``silence add`` uses."""
    try:
        return MatcherCheck(True, [str(m) for m in silence_matchers(matcher)])
    except ValueError as exc:
        return MatcherCheck(False, list(matcher), str(exc))


@post(
    "/silences",
    sync_to_thread=True,
    guards=[require_token],
    security=BEARER,
    status_code=201,
    responses={**_CHANGE, 422: ResponseSpec(Problem, description="not a silence: the reason is in detail")},
)
def create_silence(context: NamedDependency[WebContext], data: JSONBody[NewSilence]) -> SilenceView:
    """Make a silence, shared by every daemon on the store, effective at the next delivery it covers."""
    now = context.clock()
    starts = _timestamp(data.starts_at) if data.starts_at is not None else now
    if (data.duration is None) == (data.ends_at is None):
        raise _unprocessable('give duration (e.g. "2h") or ends_at, not both')
    try:
        ends = starts + parse_duration(data.duration) if data.duration is not None else _timestamp(data.ends_at)  # type: ignore[arg-type]
        author = data.author.strip() or "api"
        silence = new_silence(f"sil_{secrets.token_hex(6)}", data.matchers, starts, ends, data.comment, author, now)
    except (ValueError, OverflowError) as exc:
        raise _unprocessable(str(exc)) from None
    context.store.add_silence(silence, [str(m) for m in silence.matchers])
    return silence_view(silence, now)


@delete(
    "/silences/{silence_id:str}",
    sync_to_thread=True,
    guards=[require_token],
    security=BEARER,
    responses={**_CHANGE, 404: ResponseSpec(Problem, description="no active or pending silence with this id")},
)
def expire_silence(
    context: NamedDependency[WebContext], silence_id: Annotated[str, PathParameter(max_length=200)]
) -> None:
    """End a silence now (it is kept, as expired, for ``retention``)."""
    if not context.store.expire_silence(silence_id, context.clock()):
        raise NotFoundException(detail=f"no active or pending silence {silence_id!r}")


def api_router() -> Router:
    return Router(
        "/api/v1",
        route_handlers=[
            get_status,
            get_calls,
            get_events,
            get_deliveries,
            redeliver,
            get_silences,
            check_matchers,
            create_silence,
            expire_silence,
        ],
    )


def provide_context(request: Request[Any, Any, Any]) -> WebContext:
    return _context(request)
