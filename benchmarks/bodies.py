"""Bland-like ``/v1/calls/active`` bodies with realistic churn between polls."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

OBJECTIVE = (
    "You are calling on behalf of Northwind Dental to confirm tomorrow's appointment. "
    "Greet the patient by name, confirm the time, offer to reschedule if needed, and "
    "remind them to bring their insurance card. Be brief and friendly; if voicemail, "
    "leave a short message with the callback number."
)  # ~300 characters


@dataclass
class Campaign:
    """N active calls; each ``step()`` ends 1 %, starts 1 % and adds 1 % new calls."""

    size: int
    seed: int = 1
    t0_ms: int = 1_800_000_000_000
    rng: random.Random = field(init=False)
    calls: dict[str, dict[str, str]] = field(init=False)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.calls = {}
        for _ in range(self.size):
            self._add(status=self.rng.choice(["QUEUED", "IN_PROGRESS"]))

    def _add(self, status: str = "QUEUED", call_id: str | None = None) -> None:
        self.counter += 1
        if call_id is None:
            call_id = f"{self.rng.getrandbits(64):016x}-{self.counter:08d}-4000-8000-{self.rng.getrandbits(48):012x}"
        self.calls[call_id] = {
            "call_id": call_id,
            "user_id": "7f3c0a5e-user",
            "from": "+14155550100",
            "to": f"+1310{self.rng.randint(1000000, 9999999)}",
            "objective": OBJECTIVE,
            "pathway_id": "3b1f8a52-2c5e-4b0f-9a8e-6f1d2c3b4a5e",
            "start_time": "2027-01-15T08:00:12.000Z" if status == "IN_PROGRESS" else "",
            "international": "false",
            "status": status,
            "timestamp": str(self.t0_ms + 25 * self.counter),  # a campaign dials ~40 calls a second
        }

    def add_named(self, call_id: str) -> None:
        self._add(call_id=call_id)

    def step(self) -> None:
        n = max(1, self.size // 100)
        ids = list(self.calls)
        for call_id in self.rng.sample(ids, n):
            del self.calls[call_id]
        queued = [c for c in self.calls.values() if c["status"] == "QUEUED"]
        for call in self.rng.sample(queued, min(n, len(queued))):
            call["status"] = "IN_PROGRESS"
            call["start_time"] = "2027-01-15T08:00:30.000Z"
        for _ in range(n):
            self._add()

    def body(self) -> bytes:
        return json.dumps({"data": list(self.calls.values()), "errors": None}).encode()
