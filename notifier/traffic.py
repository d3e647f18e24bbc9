"""A seedable model of a Bland campaign's call traffic, for the simulator and the demo.

Calls arrive in bursts (batch campaigns, which queue behind themselves) and as a
steady trickle, wait in the queue for a long-tailed time (so some get stuck), run for a while and end; a few end
without ever starting. ``time_scale`` compresses every duration, so that a demo
shows a whole call lifecycle in seconds.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OBJECTIVES = (
    "Confirm tomorrow's dental appointment and offer to reschedule if needed",
    "Remind the customer that their invoice is due on Friday and take a card payment",
    "Qualify the inbound lead: budget, timeline, decision maker; book a demo",
    "Follow up on the delivery that failed yesterday and arrange a new slot",
    "Survey: ask three questions about the support call last week",
    "Collect the missing documents for the mortgage application",
)
PATHWAYS = ("pw-appointments", "pw-collections", "pw-sales", "pw-support")
DOMESTIC = ("+1310", "+1415", "+1212", "+1646", "+1512")
INTERNATIONAL = ("+4420", "+4930", "+3314", "+6129")


@dataclass
class SimCall:
    call_id: str
    created: float
    to: str
    from_: str
    international: bool
    objective: str
    pathway_id: str
    starts_at: float | None  # None: ends without ever starting
    ends_at: float
    started: bool = False

    def wire(self, now: float) -> dict[str, str]:
        """The entry exactly as Bland's API sends it (all strings, "" for unset)."""
        start = ""
        if self.started and self.starts_at is not None:
            start = (
                datetime.fromtimestamp(self.starts_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
        return {
            "call_id": self.call_id,
            "user_id": "user-sim",
            "from": self.from_,
            "to": self.to,
            "objective": self.objective,
            "pathway_id": self.pathway_id,
            "start_time": start,
            "international": "true" if self.international else "false",
            "status": "IN_PROGRESS" if self.started else "QUEUED",
            "timestamp": str(int(self.created * 1000)),
        }

    def details(self) -> dict[str, Any]:
        """What ``GET /v1/calls/{id}`` reports once the call has ended."""
        length = (self.ends_at - self.starts_at) / 60 if self.starts_at is not None else 0.0
        return {
            "call_id": self.call_id,
            "status": "completed" if self.starts_at is not None else "no-answer",
            "completed": True,
            "call_length": round(length, 2),
            "answered_by": "human" if self.starts_at is not None else None,
            "call_ended_by": "ASSISTANT" if self.starts_at is not None else None,
            "error_message": None if self.starts_at is not None else "The call was never answered",
        }


class TrafficModel:
    def __init__(
        self,
        seed: int | None = None,
        *,
        time_scale: float = 1.0,
        trickle_per_minute: float = 6.0,
        burst_every: float = 300.0,
        burst_size: tuple[int, int] = (10, 40),
        international_share: float = 0.1,
        never_start_share: float = 0.05,
        backlog: tuple[float, int] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.scale = time_scale
        self.trickle = trickle_per_minute / 60.0 / time_scale
        self.burst_every = burst_every * time_scale
        self.burst_size = burst_size
        self.international_share = international_share
        self.never_start_share = never_start_share
        self.calls: dict[str, SimCall] = {}
        self.ended: dict[str, dict[str, Any]] = {}
        self._last: float | None = None
        self._next_burst: float | None = None
        # A backlog episode: (after how long, how many calls) on one pathway, all queued
        # behind each other, so a campaign-health condition fires, then resolves as it drains.
        self._backlog = (backlog[0] * time_scale, backlog[1]) if backlog else None
        self._backlog_at: float | None = None

    def tick(self, now: float) -> None:
        """Advance the model to ``now``: arrivals, starts and ends since the last tick."""
        if self._last is None:
            self._last = now
            self._next_burst = now
            self._backlog_at = now + self._backlog[0] if self._backlog else None
        if self._backlog_at is not None and self._backlog_at <= now and self._backlog:
            for position in range(self._backlog[1]):
                self._arrive(self._backlog_at, position, pathway=PATHWAYS[0], always_starts=True)
            self._backlog_at = None
        elapsed = max(0.0, now - self._last)
        arrivals = self._poisson(self.trickle * elapsed)
        for _ in range(arrivals):
            self._arrive(self._last + self.rng.random() * elapsed)
        while self._next_burst is not None and self._next_burst <= now:
            for position in range(self.rng.randint(*self.burst_size)):
                self._arrive(self._next_burst, position)
            self._next_burst += self.burst_every * self.rng.uniform(0.7, 1.3)
        for call in list(self.calls.values()):
            if not call.started and call.starts_at is not None and call.starts_at <= now:
                call.started = True
            if call.ends_at <= now:
                del self.calls[call.call_id]
                self.ended[call.call_id] = call.details()
        self._last = now

    def active(self, now: float) -> list[dict[str, str]]:
        return [call.wire(now) for call in self.calls.values()]

    def _arrive(
        self, at: float, queue_position: int = 0, pathway: str | None = None, always_starts: bool = False
    ) -> None:
        rng = self.rng
        international = rng.random() < self.international_share
        prefix = rng.choice(INTERNATIONAL if international else DOMESTIC)
        # Queue waits: lognormal, median ~20 s with a long tail past several minutes;
        # a batch queues behind itself (~30 s a place), so big bursts leave calls stuck.
        wait = (min(rng.lognormvariate(math.log(20), 1.1), 1800) + 30 * queue_position) * self.scale
        duration = min(rng.lognormvariate(math.log(150), 0.6), 3600) * self.scale
        never = rng.random() < self.never_start_share and not always_starts
        call = SimCall(
            call_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            created=at,
            to=f"{prefix}{rng.randint(1000000, 9999999)}",
            from_="+1415555" + f"{rng.randint(0, 9999):04d}",
            international=international,
            objective=rng.choice(OBJECTIVES),
            pathway_id=rng.choice(PATHWAYS) if pathway is None else pathway,
            starts_at=None if never else at + wait,
            ends_at=at + wait + (0 if never else duration) + (rng.uniform(30, 90) * self.scale if never else 0),
        )
        self.calls[call.call_id] = call

    def _poisson(self, mean: float) -> int:
        if mean <= 0:
            return 0
        if mean > 50:
            return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))
        limit, count, product = math.exp(-mean), 0, self.rng.random()
        while product > limit:
            count += 1
            product *= self.rng.random()
        return count
