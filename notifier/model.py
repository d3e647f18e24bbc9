"""The domain's data: calls as Bland reports them, what we remember about them, events.

Everything here is an immutable msgspec Struct: cheap to compare (the steady-state
diff is one C-level ``==`` per call), cheap to encode into the store, and safe to share
between the pure core and the shell.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
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
EVENT_TYPES = CALL_EVENT_TYPES + SOURCE_EVENT_TYPES


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
    skipped: int = 0  # malformed entries left out (counted, never fatal)


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


class Event(msgspec.Struct, frozen=True):
    """A detected transition. ``data`` holds the type's fields (and ``call``)."""

    id: str
    type: str
    detected_at: float
    data: dict[str, Any]
    call_id: str | None = None


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with millisecond precision and a ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float | None:
    """ISO 8601 -> epoch seconds; None for anything unparseable (untrusted input)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def created_at(call: Call) -> float | None:
    """Bland's ``timestamp`` (epoch milliseconds, as a string) in epoch seconds."""
    text = call.timestamp
    if not text or not text.isdigit() or len(text) > 15:
        return None
    return int(text) / 1000.0


def international(call: Call) -> bool | None:
    return {"true": True, "false": False}.get(call.international.lower())


def call_payload(call: Call) -> dict[str, Any]:
    """The normalised call that events carry (SPEC, Events)."""
    start = parse_iso(call.start_time)
    return {
        "call_id": call.call_id,
        "user_id": call.user_id,
        "from": call.from_,
        "to": call.to,
        "objective": call.objective,
        "pathway_id": call.pathway_id,
        "status": call.status,
        "start_time": iso(start),
        "international": international(call),
        "created_at": iso(created_at(call)),
    }
