"""The detection function: examples for each rule of SPEC's event table, then properties."""

from __future__ import annotations

from collections import defaultdict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.detect import DetectSettings, DetectState, Transition, detect
from notifier.model import IN_PROGRESS, QUEUED, Call, PollFailure, Snapshot

T0 = 1_800_000_000.0


def call(cid: str, status: str = QUEUED, *, created: float | None = None, start: str = "", **kw: str) -> Call:
    ts = "" if created is None else str(int(created * 1000))
    return Call(
        call_id=cid,
        status=status,
        timestamp=ts,
        start_time=start,
        to=kw.get("to", "+1310"),
        international=kw.get("international", "false"),
    )


def snap(*calls: Call) -> Snapshot:
    return Snapshot(calls={c.call_id: c for c in calls})


def types(t: Transition) -> list[tuple[str, str | None]]:
    return [(e.type, e.call_id) for e in t.events]


ANNOUNCE = DetectSettings(announce_existing=True, stuck_queued_after=120, unreachable_after=60)


def test_first_seen_in_progress_emits_appeared_then_started() -> None:
    t = detect(DetectState("i"), snap(call("a", IN_PROGRESS)), T0, ANNOUNCE)
    assert types(t) == [("call.appeared", "a"), ("call.started", "a")]
    started = t.events[1]
    assert started.data["queued_for_seconds"] is None and started.data["was_stuck"] is False


def test_started_once_then_status_changed() -> None:
    s = detect(DetectState("i"), snap(call("a")), T0, ANNOUNCE).state
    t1 = detect(s, snap(call("a", IN_PROGRESS)), T0 + 10, ANNOUNCE)
    assert types(t1) == [("call.started", "a")]
    assert t1.events[0].data["queued_for_seconds"] == pytest.approx(10)
    t2 = detect(t1.state, snap(call("a", QUEUED)), T0 + 20, ANNOUNCE)
    assert types(t2) == [("call.status_changed", "a")]
    assert t2.events[0].data["previous_status"] == IN_PROGRESS
    t3 = detect(t2.state, snap(call("a", IN_PROGRESS)), T0 + 30, ANNOUNCE)
    assert types(t3) == [("call.status_changed", "a")]


def test_queued_for_uses_start_time_minus_created_at() -> None:
    s = detect(DetectState("i"), snap(call("a", created=T0 - 30)), T0, ANNOUNCE).state
    started = call("a", IN_PROGRESS, created=T0 - 30, start="2027-01-15T08:00:00Z")
    created = 1_800_000_000 - 30  # 2027-01-15T08:00:00Z is T0
    t = detect(s, snap(started), T0 + 5, ANNOUNCE)
    assert t.events[0].data["queued_for_seconds"] == pytest.approx(T0 - created)


def test_baseline_is_silent_but_timers_apply() -> None:
    quiet = DetectSettings(stuck_queued_after=60)
    t = detect(DetectState("i"), snap(call("a", created=T0 - 100), call("b", IN_PROGRESS)), T0, quiet)
    assert types(t) == [("call.stuck_queued", "a")]
    t2 = detect(t.state, snap(call("a", created=T0 - 100), call("c")), T0 + 5, quiet)
    assert types(t2) == [("call.appeared", "c"), ("call.disappeared", "b")]
    assert t2.events[1].data["was_started"] is True


def test_announce_existing_only_on_a_store_that_never_polled() -> None:
    s = detect(DetectState("i"), PollFailure("down"), T0, ANNOUNCE).state
    t = detect(s, snap(call("a")), T0 + 5, ANNOUNCE)
    assert types(t) == [("call.appeared", "a")]
    quiet = DetectSettings()
    t = detect(t.state, snap(call("a"), call("b")), T0 + 10, quiet)
    assert types(t) == [("call.appeared", "b")]


def test_stuck_measured_from_created_at_when_plausible() -> None:
    t = detect(DetectState("i"), snap(call("a", created=T0 - 119)), T0, ANNOUNCE)
    assert types(t) == [("call.appeared", "a")]
    t = detect(t.state, snap(call("a", created=T0 - 119)), T0 + 1, ANNOUNCE)
    assert types(t) == [("call.stuck_queued", "a")]
    assert t.events[0].data == {**t.events[0].data, "queued_for_seconds": pytest.approx(120), "threshold_seconds": 120}
    t = detect(t.state, snap(call("a", created=T0 - 119)), T0 + 500, ANNOUNCE)
    assert types(t) == []  # once per call without stuck_queued_repeat


@pytest.mark.parametrize("created", [T0 + 3600, T0 - 30 * 86400, None])
def test_implausible_created_at_falls_back_to_first_sighting(created: float | None) -> None:
    t = detect(DetectState("i"), snap(call("a", created=created)), T0, ANNOUNCE)
    t = detect(t.state, snap(call("a", created=created)), T0 + 119, ANNOUNCE)
    assert types(t) == []
    t = detect(t.state, snap(call("a", created=created)), T0 + 120, ANNOUNCE)
    assert types(t) == [("call.stuck_queued", "a")]
    assert t.events[0].data["queued_for_seconds"] == pytest.approx(120)


def test_stuck_repeat_and_was_stuck() -> None:
    cfg = DetectSettings(announce_existing=True, stuck_queued_after=60, stuck_queued_repeat=30)
    t = detect(DetectState("i"), snap(call("a")), T0, cfg)
    fired = []
    state = t.state
    for dt in range(5, 200, 5):
        t = detect(state, snap(call("a")), T0 + dt, cfg)
        state = t.state
        fired += [dt for e in t.events if e.type == "call.stuck_queued"]
    assert fired == [60, 90, 120, 150, 180]
    t = detect(state, snap(call("a", IN_PROGRESS)), T0 + 200, cfg)
    assert t.events[0].type == "call.started" and t.events[0].data["was_stuck"] is True


def test_long_running_once() -> None:
    cfg = DetectSettings(announce_existing=True, long_running_after=300)
    t = detect(DetectState("i"), snap(call("a", IN_PROGRESS)), T0, cfg)
    t = detect(t.state, snap(call("a", IN_PROGRESS)), T0 + 299, cfg)
    assert types(t) == []
    t = detect(t.state, snap(call("a", IN_PROGRESS)), T0 + 300, cfg)
    assert types(t) == [("call.long_running", "a")]
    assert detect(t.state, snap(call("a", IN_PROGRESS)), T0 + 900, cfg).events == []


def test_disappeared_after_missing_polls_with_details() -> None:
    cfg = DetectSettings(announce_existing=True, missing_polls=3, stuck_queued_after=10)
    t = detect(DetectState("i"), snap(call("a")), T0, cfg)
    t = detect(t.state, snap(call("a")), T0 + 20, cfg)  # stuck
    t = detect(t.state, PollFailure("x"), T0 + 25, cfg)  # failures never count as absence
    t = detect(t.state, snap(), T0 + 30, cfg)
    t = detect(t.state, PollFailure("x"), T0 + 35, cfg)
    t = detect(t.state, snap(), T0 + 40, cfg)
    assert "a" in t.state.calls
    t = detect(t.state, snap(), T0 + 50, cfg)
    assert types(t) == [("call.disappeared", "a")]
    data = t.events[0].data
    assert data["was_started"] is False and data["was_stuck"] is True and data["last_status"] == QUEUED
    assert data["observed_seconds"] == pytest.approx(20) and data["outcome"] is None
    assert t.removed == ["a"] and "a" not in t.state.calls


def test_reappearing_before_missing_polls_resets_the_count() -> None:
    cfg = DetectSettings(announce_existing=True, missing_polls=2)
    t = detect(DetectState("i"), snap(call("a")), T0, cfg)
    t = detect(t.state, snap(), T0 + 1, cfg)
    t = detect(t.state, snap(call("a")), T0 + 2, cfg)
    t = detect(t.state, snap(), T0 + 3, cfg)
    assert t.events == [] and t.state.calls["a"].missing == 1


def test_source_unreachable_then_recovered() -> None:
    cfg = DetectSettings(unreachable_after=60)
    s = DetectState("i")
    t = detect(s, PollFailure("HTTP 503"), T0, cfg)
    t = detect(t.state, PollFailure("HTTP 503"), T0 + 59, cfg)
    assert t.events == []
    t = detect(t.state, PollFailure("timed out"), T0 + 60, cfg)
    assert types(t) == [("source.unreachable", None)]
    assert t.events[0].data == {
        "since": "2027-01-15T08:00:00.000Z",
        "consecutive_failures": 3,
        "last_error": "timed out",
        "source": "default",
    }
    t = detect(t.state, PollFailure("timed out"), T0 + 120, cfg)
    assert t.events == []
    t = detect(t.state, snap(), T0 + 130, cfg)
    assert types(t) == [("source.recovered", None)]
    assert t.events[0].data["downtime_seconds"] == pytest.approx(130)


def test_a_failed_poll_changes_no_call() -> None:
    t = detect(DetectState("i"), snap(call("a")), T0, ANNOUNCE)
    f = detect(t.state, PollFailure("x"), T0 + 1000, ANNOUNCE)
    assert f.events == [] and f.changed == [] and f.removed == [] and f.state.calls == t.state.calls


def test_steady_state_changes_nothing() -> None:
    calls = [call(f"c{i}", IN_PROGRESS if i % 2 else QUEUED, created=T0) for i in range(100)]
    t = detect(DetectState("i"), snap(*calls), T0, DetectSettings(stuck_queued_after=3600))
    t2 = detect(t.state, snap(*calls), T0 + 5, DetectSettings(stuck_queued_after=3600))
    assert t2.events == [] and t2.changed == [] and t2.removed == []


def test_changing_thresholds_reschedules_timers() -> None:
    t = detect(DetectState("i"), snap(call("a", created=T0)), T0, DetectSettings(stuck_queued_after=3600))
    shorter = DetectSettings(stuck_queued_after=60)
    t = detect(t.state, snap(call("a", created=T0)), T0 + 61, shorter)
    assert types(t) == [("call.stuck_queued", "a")]


def test_event_ids_are_unique_and_stable() -> None:
    t = detect(DetectState("abc"), snap(call("a", IN_PROGRESS), call("b")), T0, ANNOUNCE)
    assert [e.id for e in t.events] == ["evt_abc_0000000001", "evt_abc_0000000002", "evt_abc_0000000003"]
    assert t.state.next_seq == 4


# -- properties -----------------------------------------------------------------------

CALL_IDS = ["c0", "c1", "c2", "c3"]
STATUSES = [QUEUED, IN_PROGRESS, "RINGING"]

step = st.one_of(
    st.just(None),  # a failed poll
    st.dictionaries(
        st.sampled_from(CALL_IDS), st.tuples(st.sampled_from(STATUSES), st.sampled_from([None, -30.0, 9e9]))
    ),
)
runs = st.tuples(
    st.lists(st.tuples(step, st.floats(0.5, 200)), min_size=1, max_size=25),
    st.builds(
        DetectSettings,
        stuck_queued_after=st.sampled_from([0.0, 30.0, 120.0]),
        stuck_queued_repeat=st.sampled_from([0.0, 45.0]),
        long_running_after=st.sampled_from([0.0, 60.0]),
        missing_polls=st.integers(1, 3),
        announce_existing=st.booleans(),
        unreachable_after=st.sampled_from([1.0, 100.0]),
    ),
)


def observations(steps: list) -> list[tuple[Snapshot | PollFailure, float]]:
    """Snapshots as the decoder yields them: a call's creation time is fixed while it is
    listed, and an unchanged entry is the very same object as at the previous poll."""
    now, out = T0, []
    created: dict[str, float | None] = {}
    objects: dict[tuple, Call] = {}
    for entry, dt in steps:
        now += dt
        if entry is None:
            out.append((PollFailure("HTTP 503"), now))
            continue
        for cid in list(created):
            if cid not in entry:
                del created[cid]
        calls = []
        for cid, (status, off) in sorted(entry.items()):
            if cid not in created:
                created[cid] = None if off is None else now + off if off < 0 else off
            key = (cid, status, created[cid])
            calls.append(objects.setdefault(key, call(cid, status, created=created[cid])))
        out.append((snap(*calls), now))
    return out


def run_all(state: DetectState, obs: list, cfg: DetectSettings) -> tuple[DetectState, list]:
    events = []
    for observation, now in obs:
        t = detect(state, observation, now, cfg)
        state = t.state
        events.extend(t.events)
    return state, events


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(runs)
def test_lifecycle_properties(run: tuple) -> None:
    steps, cfg = run
    obs = observations(steps)
    state = DetectState("p")
    absent: dict[str, int] = defaultdict(int)
    present: dict[str, bool] = {}
    baseline: set[str] = set()
    started_in_presence: dict[str, bool] = {}
    first_success = True
    for observation, now in obs:
        t = detect(state, observation, now, cfg)
        if isinstance(observation, PollFailure):
            assert all(e.type == "source.unreachable" for e in t.events)
            assert t.state.calls == state.calls
        else:
            if first_success and not cfg.announce_existing:
                baseline |= set(observation.calls)
            first_success = False
            for cid in CALL_IDS:
                absent[cid] = 0 if cid in observation.calls else absent[cid] + 1
        for e in t.events:
            cid = e.call_id
            if e.type == "call.appeared":
                assert not present.get(cid, False)
                present[cid] = True
                started_in_presence[cid] = False
            elif e.type == "call.disappeared":
                assert present.get(cid, False) or cid in baseline
                assert absent[cid] == cfg.missing_polls
                present[cid] = False
                baseline.discard(cid)
            elif e.type == "call.started":
                assert present.get(cid, False) or cid in baseline
                assert not started_in_presence.get(cid, False)
                started_in_presence[cid] = True
        ids = [e.id for e in t.events]
        assert len(set(ids)) == len(ids)
        state = t.state
        assert all(cs.missing < cfg.missing_polls for cs in state.calls.values())


_state_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(DetectState))


@PROPERTY
@given(runs, st.integers(0, 25))
def test_restart_invariance(run: tuple, cut: int) -> None:
    """Stopping after any prefix and resuming from the persisted state changes nothing."""
    steps, cfg = run
    obs = observations(steps)
    _, uninterrupted = run_all(DetectState("r"), obs, cfg)
    cut = min(cut, len(obs))
    first_state, first = run_all(DetectState("r"), obs[:cut], cfg)
    encoder, decoder = _state_codec
    resumed = decoder.decode(encoder.encode(first_state))
    _, second = run_all(resumed, obs[cut:], cfg)
    assert first + second == uninterrupted


def test_shorter_threshold_fires_for_an_unchanged_call_object() -> None:
    """The steady-state shortcut must see rescheduled timers, not the stored ones."""
    same = call("a", created=T0)
    t = detect(DetectState("i"), snap(same), T0, DetectSettings(stuck_queued_after=3600))
    t = detect(t.state, snap(same), T0 + 61, DetectSettings(stuck_queued_after=60))
    assert types(t) == [("call.stuck_queued", "a")]


hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["²", "999999999999999", "-5", "1e3", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            Call,
            call_id=st.text(min_size=1, max_size=8),
            status=st.one_of(st.sampled_from(STATUSES), st.text(max_size=12)),
            timestamp=hostile_text,
            start_time=hostile_text,
            international=hostile_text,
        ),
        max_size=6,
    )
)
def test_no_upstream_text_makes_detection_raise(entries: list[Call]) -> None:
    """Whatever strings an entry holds, detection runs (timers included) and events
    carry a valid time or none."""
    cfg = DetectSettings(announce_existing=True, stuck_queued_after=1, long_running_after=1)
    t = detect(DetectState("i"), snap(*entries), T0, cfg)
    t = detect(t.state, snap(*entries), T0 + 3600, cfg)
    t = detect(t.state, snap(), T0 + 3700, cfg)
    for event in t.events:
        assert event.data["call"]["created_at"] is None or event.data["call"]["created_at"].endswith("Z")
