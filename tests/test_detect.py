"""The detection function: examples for each rule of SPEC's event table, then properties."""

from __future__ import annotations

from collections import defaultdict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.detect import DetectSettings, DetectState, Transition, detect
from notifier.model import IN_PROGRESS, QUEUED, Call, CallState, PollFailure, Snapshot, SourceState

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


# -- exact examples: each pins a rule by an expectation computed by hand ------------------

ISO_T0 = "2027-01-15T08:00:00.000Z"  # T0 in ``iso`` form


def iso_at(offset: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + offset, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_a_failed_poll_keeps_the_numbering_and_the_reason() -> None:
    cfg = DetectSettings(unreachable_after=0.5)
    t = detect(DetectState("i", next_seq=7), PollFailure("HTTP 503"), T0, cfg)
    assert t.events == [] and t.base_seq == 7 and t.state.next_seq == 7
    assert t.state.source.last_error == "HTTP 503" and t.state.source.failing_since == T0
    t = detect(t.state, PollFailure("timed out"), T0 + 1, cfg)
    assert t.base_seq == 7 and t.state.next_seq == 8  # source.unreachable took number 7
    assert t.events[0].id == "evt_i_0000000007" and t.events[0].detected_at == T0 + 1
    assert t.state.source.last_error == "timed out" and t.state.source.failing_since == T0
    t = detect(t.state, PollFailure("timed out"), T0 + 2, cfg)
    assert t.events == [] and t.base_seq == 8 and t.state.next_seq == 8


def test_a_snapshot_keeps_name_timers_and_numbering() -> None:
    settings_ = DetectSettings(announce_existing=True, stuck_queued_after=60, stuck_queued_repeat=30)
    t = detect(DetectState("i", name="eu", next_seq=5), snap(call("a")), T0, settings_)
    assert (t.base_seq, t.state.next_seq, t.state.name, t.state.timers) == (5, 6, "eu", (60.0, 30.0, 0.0))
    assert t.events[0].detected_at == T0 and t.events[0].data["source"] == "eu"


def test_recovery_with_no_known_start_of_the_outage_has_no_downtime() -> None:
    state = DetectState("i", source=SourceState(ever_succeeded=True, unreachable=True, failing_since=None))
    (event,) = detect(state, snap(), T0, ANNOUNCE).events
    assert event.type == "source.recovered" and event.data["downtime_seconds"] is None
    state = DetectState("i", source=SourceState(ever_succeeded=True, unreachable=True, failing_since=T0 - 90))
    assert detect(state, snap(), T0, ANNOUNCE).events[0].data["downtime_seconds"] == 90


def test_timer_due_times_follow_spec_arithmetic() -> None:
    s = DetectSettings(announce_existing=True, stuck_queued_after=60, stuck_queued_repeat=30, long_running_after=300)
    t = detect(DetectState("i"), snap(call("q", created=T0 - 10), call("p", IN_PROGRESS)), T0, s)
    assert t.state.calls["q"].due == T0 + 50  # created + stuck_queued_after
    assert t.state.calls["p"].due == T0 + 300  # in progress since first sighting + long_running_after
    t = detect(t.state, snap(call("q", created=T0 - 10), call("p", IN_PROGRESS)), T0 + 50, s)
    assert [e.type for e in t.events] == ["call.stuck_queued"]  # exactly at the due time, not a poll later
    assert t.state.calls["q"].due == T0 + 80  # the announcement + stuck_queued_repeat
    off = DetectSettings(announce_existing=True)
    assert detect(DetectState("i"), snap(call("p", IN_PROGRESS)), T0, off).state.calls["p"].due == float("inf")
    once = DetectSettings(announce_existing=True, stuck_queued_after=60)
    t = detect(DetectState("i"), snap(call("q", created=T0 - 60)), T0, once)
    assert t.state.calls["q"].stuck_at == T0 and t.state.calls["q"].due == float("inf")  # announced once: no timer


def test_zero_turns_a_timer_off_and_sub_second_thresholds_work() -> None:
    off = DetectSettings(announce_existing=True, stuck_queued_after=0, long_running_after=0)
    state = DetectState("i")
    for step in range(5):
        t = detect(
            state, snap(call("q", created=T0 - 3600), call("p", IN_PROGRESS, start=iso_at(-3600))), T0 + step, off
        )
        assert not {e.type for e in t.events} & {"call.stuck_queued", "call.long_running"}
        state = t.state
    fast = DetectSettings(announce_existing=True, stuck_queued_after=0.5, long_running_after=0.5)
    t = detect(DetectState("i"), snap(call("q")), T0, fast)
    t = detect(t.state, snap(call("q")), T0 + 0.5, fast)
    assert [e.type for e in t.events] == ["call.stuck_queued"]
    t = detect(DetectState("i"), snap(call("p", IN_PROGRESS)), T0, fast)
    t = detect(t.state, snap(call("p", IN_PROGRESS)), T0 + 0.6, fast)
    assert [(e.type, e.data) for e in t.events] == [
        (
            "call.long_running",
            {"call": t.events[0].data["call"], "in_progress_for_seconds": pytest.approx(0.6), "source": "default"},
        )
    ]


def test_stuck_repeat_zero_is_once_and_a_repeat_waits_its_period() -> None:
    for repeat, expected in ((0.0, 1), (0.5, 5), (100.0, 1)):
        s = DetectSettings(announce_existing=True, stuck_queued_after=1, stuck_queued_repeat=repeat)
        state, stuck = DetectState("i"), 0
        for step in range(1, 6):  # polls at +1 s .. +5 s
            t = detect(state, snap(call("q", created=T0)), T0 + step, s)
            stuck += sum(e.type == "call.stuck_queued" for e in t.events)
            state = t.state
        assert stuck == expected, repeat


def test_upstream_times_are_trusted_at_the_edges_of_plausible() -> None:
    from notifier.detect import CLOCK_SKEW, MAX_PLAUSIBLE_AGE

    s = DetectSettings(announce_existing=True, stuck_queued_after=100)
    # created exactly a week before the first sighting: plausible, stuck 100 s after creation (long ago)
    t = detect(DetectState("i"), snap(call("old", created=T0 - MAX_PLAUSIBLE_AGE)), T0, s)
    assert [e.type for e in t.events] == ["call.appeared", "call.stuck_queued"]
    # created exactly CLOCK_SKEW in the future: still trusted, so stuck at created + 100
    t = detect(DetectState("i"), snap(call("skew", created=T0 + CLOCK_SKEW)), T0, s)
    assert t.state.calls["skew"].due == T0 + CLOCK_SKEW + 100
    # a little within the skew: trusted too (not first_seen - skew)
    t = detect(DetectState("i"), snap(call("near", created=T0 + 30)), T0, s)
    assert t.state.calls["near"].due == T0 + 130
    # beyond: our own first sighting counts
    t = detect(DetectState("i"), snap(call("far", created=T0 + CLOCK_SKEW + 1)), T0, s)
    assert t.state.calls["far"].due == T0 + 100


def test_long_running_counts_from_bland_start_time_else_from_our_sighting_of_the_start() -> None:
    s = DetectSettings(announce_existing=True, long_running_after=300)
    t = detect(DetectState("i"), snap(call("p", IN_PROGRESS, start=iso_at(-200))), T0, s)
    assert t.state.calls["p"].due == T0 + 100  # Bland says it started 200 s ago
    t = detect(t.state, snap(call("p", IN_PROGRESS, start=iso_at(-200))), T0 + 100, s)
    assert [(e.type, e.data["in_progress_for_seconds"]) for e in t.events] == [("call.long_running", 300.0)]
    # No start_time: from the poll that saw it start (not from the call's first sighting).
    t = detect(DetectState("i"), snap(call("q")), T0, s)
    t = detect(t.state, snap(call("q", IN_PROGRESS)), T0 + 40, s)
    assert t.state.calls["q"].in_progress_since == T0 + 40 and t.state.calls["q"].due == T0 + 340


def test_in_progress_since_is_recorded_when_a_call_starts_and_kept_on_re_entry() -> None:
    t = detect(DetectState("i"), snap(call("a", IN_PROGRESS)), T0, ANNOUNCE)
    assert t.state.calls["a"].in_progress_since == T0 and t.state.calls["a"].started
    t = detect(DetectState("i"), snap(call("b")), T0, ANNOUNCE)
    t = detect(t.state, snap(call("b", IN_PROGRESS)), T0 + 5, ANNOUNCE)
    assert t.state.calls["b"].in_progress_since == T0 + 5
    t = detect(t.state, snap(call("b", "ON_HOLD")), T0 + 6, ANNOUNCE)
    assert t.state.calls["b"].in_progress_since == T0 + 5  # a status away from IN_PROGRESS keeps it
    t = detect(t.state, snap(call("b", IN_PROGRESS)), T0 + 7, ANNOUNCE)
    assert [e.type for e in t.events] == ["call.status_changed"] and t.state.calls["b"].in_progress_since == T0 + 5
    # A call seen first in another status gets its in-progress time when it first enters it.
    t = detect(DetectState("i"), snap(call("c", "RINGING")), T0, ANNOUNCE)
    assert t.state.calls["c"].in_progress_since is None
    t = detect(t.state, snap(call("c", "ON_HOLD")), T0 + 1, ANNOUNCE)
    assert t.state.calls["c"].in_progress_since is None  # not IN_PROGRESS: still unknown


def test_queued_time_at_start_is_bland_start_minus_creation_even_when_zero() -> None:
    t = detect(DetectState("i"), snap(call("z", IN_PROGRESS, created=T0 - 5, start=iso_at(-5))), T0, ANNOUNCE)
    assert t.events[1].data == {
        "call": t.events[1].data["call"],
        "queued_for_seconds": 0.0,
        "was_stuck": False,
        "source": "default",
    }
    t = detect(DetectState("i"), snap(call("y", IN_PROGRESS, created=T0 - 50, start=iso_at(-8))), T0, ANNOUNCE)
    assert t.events[1].data["queued_for_seconds"] == 42.0  # first seen in progress: Bland's times


def test_a_call_back_after_a_missed_poll_forgets_that_it_was_missing() -> None:
    s = DetectSettings(announce_existing=True, missing_polls=2)
    t = detect(DetectState("i"), snap(call("a")), T0, s)
    t = detect(t.state, snap(), T0 + 5, s)
    assert t.state.calls["a"].missing == 1 and t.state.calls["a"].last_seen == T0
    t = detect(t.state, snap(call("a")), T0 + 10, s)
    assert t.events == [] and t.state.calls["a"].missing == 0 and t.state.calls["a"].last_seen is None


def test_an_identical_entry_decoded_afresh_is_no_change() -> None:
    t = detect(DetectState("i"), snap(call("a")), T0, ANNOUNCE)
    again = detect(t.state, snap(call("a")), T0 + 5, ANNOUNCE)  # equal, not the same object
    assert again.events == [] and again.changed == [] and again.removed == []


def test_calls_that_end_together_are_reported_in_the_order_they_were_first_seen() -> None:
    t = detect(DetectState("i"), snap(call("zz")), T0, ANNOUNCE)
    t = detect(t.state, snap(call("zz"), call("aa")), T0 + 1, ANNOUNCE)
    t = detect(t.state, snap(), T0 + 2, ANNOUNCE)
    assert types(t) == [("call.disappeared", "zz"), ("call.disappeared", "aa")]


def test_a_call_that_ends_while_timers_are_rescheduled_is_not_written_back() -> None:
    t = detect(DetectState("i"), snap(call("a"), call("b")), T0, ANNOUNCE)
    other = DetectSettings(announce_existing=True, stuck_queued_after=999, unreachable_after=60)
    t = detect(t.state, snap(call("b")), T0 + 5, other)  # timers changed: every call rescheduled
    assert t.removed == ["a"] and [cs.call.call_id for cs in t.changed] == ["b"]


def test_an_end_with_no_successful_poll_before_has_no_observed_time() -> None:
    state = DetectState("i", calls={"a": CallState(call=call("a"), first_seen=T0 - 10)})
    (event,) = detect(state, snap(), T0, ANNOUNCE).events
    assert event.type == "call.disappeared" and event.data["observed_seconds"] is None


def test_an_unchanged_call_is_checked_exactly_at_its_due_time() -> None:
    """As the decoder hands them over: the same object poll after poll."""
    s = DetectSettings(announce_existing=True, stuck_queued_after=60)
    q = call("q", created=T0 - 10)
    t = detect(DetectState("i"), snap(q), T0, s)
    t = detect(t.state, snap(q), T0 + 49.9, s)
    assert t.events == []
    t = detect(t.state, snap(q), T0 + 50, s)
    assert types(t) == [("call.stuck_queued", "q")]
    off = DetectSettings(announce_existing=True, stuck_queued_after=0)
    assert detect(DetectState("i"), snap(q), T0, off).state.calls["q"].due == float("inf")


def test_a_changed_entry_of_a_stuck_call_is_not_announced_stuck_again() -> None:
    for repeat in (0.0, 100.0):
        s = DetectSettings(announce_existing=True, stuck_queued_after=1, stuck_queued_repeat=repeat)
        t = detect(DetectState("i"), snap(call("q", created=T0)), T0 + 1, s)
        assert [e.type for e in t.events] == ["call.appeared", "call.stuck_queued"]
        t = detect(t.state, snap(call("q", created=T0, to="+4420")), T0 + 10, s)  # still QUEUED, new number
        assert t.events == [], repeat


def test_the_events_of_one_call_share_one_payload() -> None:
    t = detect(DetectState("i"), snap(call("a", IN_PROGRESS), call("b", IN_PROGRESS)), T0, ANNOUNCE)
    a_appeared, a_started, b_appeared, b_started = t.events
    assert a_appeared.data["call"] is a_started.data["call"] and b_appeared.data["call"] is b_started.data["call"]
    assert a_appeared.data["call"]["call_id"] == "a" and b_appeared.data["call"]["call_id"] == "b"


def test_durations_are_rounded_to_milliseconds() -> None:
    s = detect(DetectState("i"), snap(call("a")), T0 + 0.1, ANNOUNCE).state
    t = detect(s, snap(call("a", IN_PROGRESS)), T0 + 0.8891234, ANNOUNCE)
    assert t.events[0].data["queued_for_seconds"] == 0.789  # not 0.7891234 nor 0.78900003...
    gone = detect(t.state, snap(), T0 + 1.5, ANNOUNCE).events[0]
    assert gone.data["observed_seconds"] == 0.789  # first to last sighting
