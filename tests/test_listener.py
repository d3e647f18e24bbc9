"""/healthz semantics, as a pure function of the detection state and the clock."""

from __future__ import annotations

from notifier.detect import DetectState
from notifier.listener import health
from notifier.model import SourceState

T0 = 1_800_000_000.0


def state(**source: object) -> DetectState:
    return DetectState("i", source=SourceState(**source))  # type: ignore[arg-type]


def test_health_states() -> None:
    assert health(None, T0, 60) == (200, {"status": "starting"})
    ok = health(state(ever_succeeded=True, last_success=T0), T0 + 1, 60)
    assert ok[0] == 200 and ok[1]["status"] == "ok"
    failing = state(ever_succeeded=True, last_success=T0, failing_since=T0 + 5, failures=2, last_error="HTTP 503")
    degraded = health(failing, T0 + 30, 60)
    assert degraded[0] == 200 and degraded[1]["status"] == "degraded" and degraded[1]["last_error"] == "HTTP 503"
    # unreachable from the moment the threshold passes, before any poll says so
    code, body = health(failing, T0 + 65, 60)
    assert code == 503 and body["status"] == "unreachable" and body["failing_since"] == "2027-01-15T08:00:05.000Z"
    assert health(state(failing_since=T0, failures=9, unreachable=True), T0 + 1, 600)[0] == 503
