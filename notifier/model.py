"""The domain's data: calls as Bland reports them, what we remember about them, events.

Everything here is an immutable msgspec Struct: cheap to compare (the steady-state
diff is one C-level ``==`` per call), cheap to encode into the store, and safe to share
between the pure core and the shell.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

QUEUED = "QUEUED"
IN_PROGRESS = "IN_PROGRESS"

#: Event types this version emits, in the order SPEC lists them.
CALL_EVENT_TYPES = (
    "call.appeared",
    "call.started",
    "call.status_changed",
    "call.stuck_queued",
    "call.long_running",
    "call.disappeared",
)
SOURCE_EVENT_TYPES = ("source.unreachable", "source.recovered")
CONDITION_EVENT_TYPES = ("condition.firing", "condition.resolved")
EVENT_TYPES = CALL_EVENT_TYPES + SOURCE_EVENT_TYPES + CONDITION_EVENT_TYPES


class Call(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/calls/active``, every field a string as Bland sends it.

    Kept raw on purpose: normalising 10k entries per poll would cost more than the
    whole diff, and only calls that produce an event need their normalised form
    (:func:`call_payload`).
    """

    call_id: str = ""
    user_id: str = ""
    from_: str = msgspec.field(default="", name="from")
    to: str = ""
    objective: str = ""
    pathway_id: str = ""
    start_time: str = ""
    international: str = ""
    status: str = ""
    timestamp: str = ""


class Snapshot(msgspec.Struct, frozen=True):
    """The decoded answer of one successful poll."""

    calls: dict[str, Call]
    skipped: int = 0  # entries left out: malformed ones and duplicate call_ids (counted, never fatal)
    duplicates: int = 0  # of which: a call_id listed more than once (one entry is kept)


class PollFailure(msgspec.Struct, frozen=True):
    """A poll that produced no usable snapshot; it computes no call transitions."""

    reason: str


class CallState(msgspec.Struct, frozen=True):
    """What the store remembers about one active call between polls."""

    call: Call
    first_seen: float
    started: bool = False  # call.started emitted, or first seen IN_PROGRESS in the baseline
    in_progress_since: float | None = None
    stuck_at: float | None = None  # last call.stuck_queued announcement
    long_running: bool = False
    missing: int = 0  # consecutive successful polls without this call
    last_seen: float | None = None  # set while missing: the last poll that saw it
    due: float = math.inf  # next moment a timer event (stuck, long-running) may fire


class SourceState(msgspec.Struct, frozen=True):
    """Health of the upstream API as seen by the poll loop."""

    ever_succeeded: bool = False
    last_success: float | None = None
    failing_since: float | None = None
    failures: int = 0
    last_error: str | None = None
    unreachable: bool = False  # source.unreachable emitted and not yet recovered

    def unreachable_at(self, now: float, after: float) -> bool:
        """Whether the source counts as unreachable at ``now``: failing for ``after``
        seconds, whether or not a poll has said so yet."""
        return self.unreachable or (self.failing_since is not None and now - self.failing_since >= after)


class Instance(msgspec.Struct, frozen=True):
    """One condition for one group: holding since when, firing since when."""

    condition: str
    group: dict[str, str]
    holding_since: float | None = None
    firing_since: float | None = None
    last_held: float | None = None  # the last poll it held (keep_firing_for counts from it)
    value: float = 0.0


class Mark(msgspec.Struct, frozen=True, array_like=True):
    """A transition a rate counts: a call that started, or ended without starting."""

    at: float
    kind: str  # started | ended_unstarted
    fields: dict[str, str]


class GroupCount(msgspec.Struct, frozen=True, array_like=True):
    values: list[str]  # the group's values, in group_by order
    queued: int
    in_progress: int


class Tally(msgspec.Struct, frozen=True, array_like=True):
    """One condition's counts of active calls per group, kept between polls."""

    signature: str  # its group_by and matchers: counts taken under others are recounted
    groups: list[GroupCount]


class ConditionState(msgspec.Struct, frozen=True):
    instances: dict[str, Instance] = {}  # by instance_key
    marks: list[Mark] = []  # the last RATE_WINDOW of them
    tallies: dict[str, Tally] = {}  # by condition name

    def firing(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.firing_since is not None]


class Event(msgspec.Struct, frozen=True):
    """A detected transition. ``data`` holds the type's fields (and ``call``)."""

    id: str
    type: str
    detected_at: float
    data: dict[str, Any]
    call_id: str | None = None


def event_document(event: Event) -> dict[str, Any]:
    """An event as everything outside shows it (webhook bodies, ``events --json``):
    ``{"type", "timestamp", "data": {"id", ...event data...}}``, as SPEC fixes it."""
    return {"type": event.type, "timestamp": iso(event.detected_at), "data": {"id": event.id, **event.data}}


_EPOCH = datetime(1970, 1, 1)
#: The range of times a ``datetime`` can show, in epoch seconds and milliseconds.
_YEAR_1_S = -62_135_596_800
_YEAR_10000_MS = 253_402_300_800_000
#: What ``iso`` produces; a time Bland already sends in this form is passed through.
_ISO_MILLIS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with millisecond precision and a ``Z``."""
    return None if ts is None else iso_millis(round(ts * 1000))


def iso_millis(ms: int) -> str:
    """Epoch milliseconds -> ``iso``'s form, in integers (floats lose a millisecond
    here and there). Events of a poll share a ``detected_at`` and calls are created
    in bursts, so the whole-second part is cached: this runs for every event."""
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return (_EPOCH + timedelta(seconds=second)).isoformat()


def normal_time(text: str) -> str | None:
    """An upstream ISO 8601 time in ``iso``'s form; None if it is not a valid time.

    Reformatting costs a few microseconds, several times the check that Bland's text
    already has that form.
    """
    if _ISO_MILLIS_UTC.fullmatch(text):
        return text if parse_iso(text) is not None else None
    return iso(parse_iso(text))


def parse_iso(text: str) -> float | None:
    """ISO 8601 -> epoch seconds; None for anything unparseable (untrusted input)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    except (ValueError, OverflowError):  # also a time that is out of range once in UTC
        return None
    return ts if _YEAR_1_S <= ts < _YEAR_10000_MS / 1000 else None  # ``iso`` can show it


def created_ms(call: Call) -> int | None:
    """Bland's ``timestamp``: epoch milliseconds of the call's creation, as a string."""
    text = call.timestamp
    if not text or not text.isascii() or not text.isdigit() or len(text) > 15:
        return None  # isascii: str.isdigit() also accepts digits int() refuses ("²")
    ms = int(text)
    return ms if ms < _YEAR_10000_MS else None  # beyond what a datetime can show


def created_at(call: Call) -> float | None:
    """The call's creation time in epoch seconds."""
    ms = created_ms(call)
    return None if ms is None else ms / 1000.0


_BOOLEANS = {"true": True, "false": False}


def international(call: Call) -> bool | None:
    return _BOOLEANS.get(call.international.lower())


def call_payload(call: Call) -> dict[str, Any]:
    """The normalised call that events carry (SPEC, Events)."""
    created = created_ms(call)
    return {
        "call_id": call.call_id,
        "user_id": call.user_id,
        "from": call.from_,
        "to": call.to,
        "objective": call.objective,
        "pathway_id": call.pathway_id,
        "status": call.status,
        "start_time": normal_time(call.start_time),
        "international": international(call),
        "created_at": iso_millis(created) if created is not None else None,
    }
