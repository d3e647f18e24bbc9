"""Conditions, the pure part: fire after holding ``for``, resolve after
``keep_firing_for``, untouched by a failed poll, the same across a restart, and a group
that is gone resolves; inhibition follows the firing group."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from notifier.conditions import RATE_WINDOW, Condition, apply, evaluate, inhibited_by, instance_key
from notifier.detect import DetectSettings, DetectState, detect
from notifier.model import IN_PROGRESS, QUEUED, Call, CallState, ConditionState, Event, PollFailure, call_payload, iso
from notifier.route import parse_matcher

T0 = 1_800_000_000.0


def calls(queued: int, running: int = 0, pathway: str = "pw-1", first_seen: float = T0) -> dict[str, CallState]:
    found = {}
    for i in range(queued):
        call = Call(call_id=f"{pathway}-q{i}", status=QUEUED, pathway_id=pathway)
        found[call.call_id] = CallState(call=call, first_seen=first_seen)
    for i in range(running):
        call = Call(call_id=f"{pathway}-r{i}", status=IN_PROGRESS, pathway_id=pathway)
        found[call.call_id] = CallState(call=call, first_seen=first_seen, started=True)
    return found


BACKLOG = Condition("backlog", "queued", 3.0, above=True, for_=30.0, keep_firing_for=20.0)


def run(cond: Condition, polls: list[tuple[float, dict[str, CallState]]], state: ConditionState | None = None):
    state = state or ConditionState()
    out = []
    for now, snapshot in polls:
        state, found = evaluate([cond], state, snapshot, [], now)
        out.extend((now, kind, data) for kind, data in found)
    return state, out


def reference(cond: Condition, polls: list[tuple[float, int]]) -> list[tuple[float, str]]:
    """SPEC read literally, for one group: fires at the first poll where it has held since
    a poll at least ``for`` ago (all polls between holding), resolves at the first poll at
    least ``keep_firing_for`` after the last poll that held."""
    events, since, firing, last = [], None, False, None
    for now, value in polls:
        if cond.holds(value):
            since = now if since is None else since
            last = now
            if not firing and now - since >= cond.for_:
                firing = True
                events.append((now, "condition.firing"))
        else:
            since = None
            if firing and now - last >= cond.keep_firing_for:  # type: ignore[operator]
                firing = False
                events.append((now, "condition.resolved"))
    return events


POLLS = st.lists(st.tuples(st.floats(1.0, 15.0), st.integers(0, 6)), min_size=1, max_size=40)


def timeline(steps: list[tuple[float, int]]) -> list[tuple[float, int]]:
    now, found = T0, []
    for gap, value in steps:
        now += round(gap, 3)
        found.append((now, value))
    return found


@given(POLLS)
def test_fires_after_holding_for_and_resolves_after_keep_firing_for_as_the_reference_says(
    steps: list[tuple[float, int]],
) -> None:
    polls = timeline(steps)
    _, got = run(BACKLOG, [(now, calls(value)) for now, value in polls])
    assert [(now, kind) for now, kind, _ in got] == reference(BACKLOG, polls)
    for _, kind, data in got:
        assert data["condition"] == "backlog" and data["group"] == {}
        if kind == "condition.firing":
            assert data["value"] > 3 and data["threshold"] == 3.0 and data["for_seconds"] >= 30.0


@given(POLLS, st.integers(0, 39))
def test_a_restart_from_the_committed_state_gives_the_same_events(steps: list[tuple[float, int]], cut: int) -> None:
    polls = [(now, calls(value)) for now, value in timeline(steps)]
    _, straight = run(BACKLOG, polls)
    cut = min(cut, len(polls))
    state, first = run(BACKLOG, polls[:cut])
    stored = msgspec.json.decode(msgspec.json.encode(state), type=ConditionState)  # as the store keeps it
    _, second = run(BACKLOG, polls[cut:], stored)
    assert first + second == straight


def test_a_failed_poll_changes_no_condition() -> None:
    settings = DetectSettings()
    state = DetectState("i", conditions=run(BACKLOG, [(T0, calls(5)), (T0 + 40, calls(5))])[0])
    assert state.conditions.firing()
    after = detect(state, PollFailure("HTTP 503"), T0 + 100, settings)
    assert after.state.conditions == state.conditions and not after.events


def test_groups_fire_on_their_own_and_a_group_that_is_gone_resolves() -> None:
    per_pathway = Condition("backlog", "queued", 3.0, above=True, group_by=("pathway_id",))
    both = {**calls(5, pathway="pw-7"), **calls(1, pathway="pw-8")}
    state, found = run(per_pathway, [(T0, both)])
    assert [(k, d["group"], d["value"]) for _, k, d in found] == [("condition.firing", {"pathway_id": "pw-7"}, 5.0)]
    state, found = run(per_pathway, [(T0 + 5, calls(1, pathway="pw-8"))], state)  # pw-7's calls all ended
    assert [(k, d["group"], d["firing_seconds"]) for _, k, d in found] == [
        ("condition.resolved", {"pathway_id": "pw-7"}, 5.0)
    ]
    assert not state.instances


def test_below_oldest_and_rates() -> None:
    idle = Condition("nothing starting", "started_per_minute", 1.0, above=False, for_=0.0)
    started = [
        Event(id=f"e{i}", type="call.started", detected_at=T0, data={"call": call_payload(Call(call_id=f"c{i}"))})
        for i in range(10)
    ]
    state, found = evaluate([idle], ConditionState(), {}, started, T0)
    assert found == []  # 10 in 5 minutes = 2 a minute
    state, found = evaluate([idle], state, {}, [], T0 + 301)  # the window moved past them
    assert [(k, d["value"]) for k, d in found] == [("condition.firing", 0.0)]
    oldest = Condition("old", "oldest_queued_seconds", 60.0, above=True)
    _, found = evaluate([oldest], ConditionState(), calls(2, first_seen=T0), [], T0 + 90.5)
    assert [(k, d["value"]) for k, d in found] == [("condition.firing", 90.5)]
    matching = Condition("uk", "active", 0.0, above=True, matchers=(parse_matcher('pathway_id = "pw-9"'),))
    _, found = evaluate([matching], ConditionState(), {**calls(2, 1), **calls(1, pathway="pw-9")}, [], T0)
    assert [d["value"] for _, d in found] == [1.0]


def test_condition_events_are_numbered_after_detections_and_inhibit_their_group() -> None:
    cond = Condition("backlog", "queued", 1.0, above=True, group_by=("pathway_id",), inhibits=("call.stuck_queued",))
    state = DetectState("inst", calls={**calls(3, pathway="pw-7"), **calls(1, pathway="pw-8")}, next_seq=5)
    transition = detect(state, _snapshot(state), T0, DetectSettings())
    applied = apply(transition, [cond], T0)
    assert [e.id for e in applied.events] == ["evt_inst_0000000005"] and applied.state.next_seq == 6
    assert applied.events[0].data["source"] == "default"

    def stuck(pathway: str) -> Event:
        call = call_payload(Call(call_id="x", pathway_id=pathway, status=QUEUED))
        return Event(id="s", type="call.stuck_queued", detected_at=T0, data={"call": call})

    assert inhibited_by(applied.state.conditions, [cond], stuck("pw-7")) == "backlog"
    assert inhibited_by(applied.state.conditions, [cond], stuck("pw-8")) is None  # not firing there
    started = Event(id="t", type="call.started", detected_at=T0, data=stuck("pw-7").data)
    assert inhibited_by(applied.state.conditions, [cond], started) is None  # a type it does not list


def _snapshot(state: DetectState):  # type: ignore[no-untyped-def]
    from notifier.model import Snapshot

    return Snapshot(calls={cid: cs.call for cid, cs in state.calls.items()})


def test_a_grouped_rate_knows_the_groups_of_active_calls_and_keeps_only_the_fields_it_needs() -> None:
    stalled = Condition("stalled", "started_per_minute", 1.0, above=False, group_by=("pathway_id",))
    _, found = evaluate([stalled], ConditionState(), calls(400, pathway="pw-x"), [], T0)
    assert [(k, d["group"], d["value"]) for k, d in found] == [("condition.firing", {"pathway_id": "pw-x"}, 0.0)]
    started = Event(
        id="e", type="call.started", detected_at=T0, data={"call": call_payload(Call(call_id="c", pathway_id="pw-y"))}
    )
    state, _ = evaluate([stalled], ConditionState(), {}, [started], T0)
    assert [m.fields for m in state.marks] == [{"pathway_id": "pw-y"}]  # not the objective, not the number


def test_a_firing_condition_removed_from_the_config_is_resolved_not_left_open() -> None:
    state, _ = run(BACKLOG, [(T0, calls(5)), (T0 + 40, calls(5))])
    assert state.firing()
    after, found = evaluate([], state, calls(5), [], T0 + 50)
    assert [(k, d["condition"], d["reason"]) for k, d in found] == [
        ("condition.resolved", "backlog", "removed from the configuration")
    ]
    assert not after.instances


def test_condition_events_can_be_routed_and_silenced_by_their_group() -> None:
    from notifier.route import compile_rule, event_fields

    rule = compile_rule(name="pw-7 team", events=["condition.*"], match=['pathway_id = "pw-7"'], targets=["t"])
    event = Event(
        id="c", type="condition.firing", detected_at=T0, data={"condition": "b", "group": {"pathway_id": "pw-7"}}
    )
    assert rule.fits(event.type, event_fields(event))


def test_each_metric_counts_what_it_says() -> None:
    snapshot = {**calls(3, 2), **calls(1, 4, pathway="pw-2")}
    snapshot["gone"] = CallState(
        call=Call(call_id="gone", status=QUEUED), first_seen=T0, missing=1
    )  # not in the answer
    expected = {"queued": 4.0, "in_progress": 6.0, "active": 10.0}
    for metric, value in expected.items():
        cond = Condition(metric, metric, 0.0, above=True)
        _, found = evaluate([cond], ConditionState(), snapshot, [], T0)
        assert [d["value"] for _, d in found] == [value], metric
    assert Condition("x", "queued", 3.0, above=True).holds(3.0) is False  # strictly above
    assert Condition("x", "queued", 3.0, above=False).holds(3.0) is False  # strictly below
    assert Condition("x", "queued", 3.0, above=False).holds(2.9) is True


def test_rates_count_starts_and_calls_that_ended_unstarted_in_the_last_five_minutes() -> None:
    def ended(i: int, started: bool, at: float) -> Event:
        data = {"call": call_payload(Call(call_id=f"d{i}")), "was_started": started}
        return Event(id=f"d{i}", type="call.disappeared", detected_at=at, data=data)

    events = [ended(i, False, T0) for i in range(5)] + [ended(9, True, T0)]
    events.append(Event(id="s", type="source.unreachable", detected_at=T0, data={}))  # no call: not counted
    lost = Condition("lost", "ended_unstarted_per_minute", 0.5, above=True)
    state, found = evaluate([lost], ConditionState(), {}, events, T0)
    assert [(k, d["value"]) for k, d in found] == [("condition.firing", 1.0)]  # 5 in 5 minutes
    assert [m.kind for m in state.marks] == ["ended_unstarted"] * 5
    state, _ = evaluate([lost], state, {}, [], T0 + RATE_WINDOW - 0.001)
    assert len(state.marks) == 5  # still inside the window
    state, found = evaluate([lost], state, {}, [], T0 + RATE_WINDOW)
    assert not state.marks and [(k, d["value"]) for k, d in found] == [("condition.resolved", 0.0)]


def test_firing_and_resolved_events_carry_exactly_their_fields() -> None:
    cond = Condition("backlog", "queued", 1.0, above=True, for_=10.0, group_by=("pathway_id",))
    state, found = run(cond, [(T0, calls(2, pathway="p")), (T0 + 10, calls(3, pathway="p"))])
    assert found == [
        (
            T0 + 10,
            "condition.firing",
            {
                "condition": "backlog",
                "metric": "queued",
                "direction": "above",
                "group": {"pathway_id": "p"},
                "value": 3.0,
                "threshold": 1.0,
                "since": iso(T0),
                "for_seconds": 10.0,
            },
        )
    ]
    [instance] = state.instances.values()
    assert (instance.holding_since, instance.firing_since, instance.last_held) == (T0, T0 + 10, T0 + 10)
    assert instance_key("backlog", {"pathway_id": "p"}) in state.instances
    _, found = run(cond, [(T0 + 25, calls(1, pathway="p"))], state)
    assert found == [
        (
            T0 + 25,
            "condition.resolved",
            {
                "condition": "backlog",
                "metric": "queued",
                "group": {"pathway_id": "p"},
                "value": 1.0,
                "firing_seconds": 15.0,
                "reason": None,
            },
        )
    ]


def test_keep_firing_for_counts_from_the_last_poll_that_held() -> None:
    cond = Condition("b", "queued", 1.0, above=True, keep_firing_for=10.0)
    polls = [(T0, calls(3)), (T0 + 5, calls(0)), (T0 + 9.9, calls(0)), (T0 + 10, calls(0))]
    state, found = run(cond, polls)
    assert [(t, k) for t, k, _ in found] == [(T0, "condition.firing"), (T0 + 10, "condition.resolved")]
    state, found = run(cond, [(T0, calls(3)), (T0 + 5, calls(0)), (T0 + 8, calls(3)), (T0 + 17, calls(0))])
    assert [k for _, k, _ in found] == ["condition.firing"]  # held again at +8: the 10 s count from there


def test_inhibition_follows_the_conditions_matchers_and_only_call_events() -> None:
    cond = Condition(
        "uk backlog",
        "queued",
        0.0,
        above=True,
        matchers=(parse_matcher('to =~ "\\+44.*"'),),
        inhibits=("call.stuck_queued",),
    )
    uk = {"u": CallState(call=Call(call_id="u", status=QUEUED, to="+442071234567"), first_seen=T0)}
    state, _ = evaluate([cond], ConditionState(), uk, [], T0)

    def stuck(to: str) -> Event:
        return Event(
            id="s", type="call.stuck_queued", detected_at=T0, data={"call": call_payload(Call(call_id="x", to=to))}
        )

    assert inhibited_by(state, [cond], stuck("+442079460000")) == "uk backlog"
    assert inhibited_by(state, [cond], stuck("+13105550100")) is None  # the condition does not count it
    assert inhibited_by(state, [cond], Event(id="n", type="call.stuck_queued", detected_at=T0, data={})) is None


def test_instances_are_keyed_by_name_and_every_group_value() -> None:
    assert instance_key("a", {"x": "1", "y": "2"}) == "a\x1fx=1\x1fy=2"
    assert instance_key("a", {}) == "a\x1f"


def test_grouping_by_several_fields_and_by_international_as_rules_see_it() -> None:
    intl = {
        "u": CallState(call=Call(call_id="u", status=QUEUED, international="true", pathway_id="p"), first_seen=T0),
        "v": CallState(call=Call(call_id="v", status=QUEUED, international="false", pathway_id="p"), first_seen=T0),
        "w": CallState(
            call=Call(call_id="w", status=IN_PROGRESS, international="maybe", pathway_id="p"), first_seen=T0
        ),
    }
    by_intl = Condition("by intl", "active", 0.0, above=True, group_by=("international",))
    _, found = evaluate([by_intl], ConditionState(), intl, [], T0)
    assert sorted((d["group"]["international"], d["value"]) for _, d in found) == [
        ("", 1.0),
        ("false", 1.0),
        ("true", 1.0),
    ]
    two = Condition("two", "active", 0.0, above=True, group_by=("pathway_id", "status"))
    _, found = evaluate([two], ConditionState(), intl, [], T0)
    assert sorted((tuple(d["group"].values()), d["value"]) for _, d in found) == [
        (("p", IN_PROGRESS), 1.0),
        (("p", QUEUED), 2.0),
    ]
    only = Condition("intl only", "queued", 0.0, above=True, matchers=(parse_matcher('international = "true"'),))
    _, found = evaluate([only], ConditionState(), intl, [], T0)
    assert [d["value"] for _, d in found] == [1.0]


def test_rates_match_and_group_their_transitions() -> None:
    def started(cid: str, pathway: str) -> Event:
        return Event(
            id=cid,
            type="call.started",
            detected_at=T0,
            data={"call": call_payload(Call(call_id=cid, pathway_id=pathway))},
        )

    events = [Event(id="x", type="source.recovered", detected_at=T0, data={})]  # skipped, not the end of the list
    events += [started("a", "p1"), started("b", "p2"), started("c", "p2")]
    rate = Condition("starts", "started_per_minute", 0.0, above=True, matchers=(parse_matcher('pathway_id = "p2"'),))
    _, found = evaluate([rate], ConditionState(), {}, events, T0)
    assert [d["value"] for _, d in found] == [0.4]  # 2 starts in five minutes
    per = Condition("per", "started_per_minute", 0.0, above=True, group_by=("pathway_id",))
    _, found = evaluate([per], ConditionState(), {}, events, T0)
    assert sorted((d["group"]["pathway_id"], d["value"]) for _, d in found) == [("p1", 0.2), ("p2", 0.4)]


def test_times_are_rounded_to_milliseconds_and_below_says_so() -> None:
    cond = Condition("few", "in_progress", 2.0, above=False, for_=1.0)
    state, found = run(cond, [(T0 + 0.00011, calls(0, 1)), (T0 + 1.23456, calls(0, 1))])
    [(_, _, firing)] = found
    assert firing["direction"] == "below" and firing["for_seconds"] == 1.234
    old = Condition("old", "oldest_queued_seconds", 1.0, above=True)
    _, found = evaluate([old], ConditionState(), calls(1, first_seen=T0), [], T0 + 2.34567)
    assert [d["value"] for _, d in found] == [2.346]
    _, found = run(cond, [(T0 + 3.45678, calls(0, 5))], state)
    assert [d["firing_seconds"] for _, _, d in found] == [2.222]
    _, found = evaluate([], state, {}, [], T0 + 3.45678)
    assert found == [
        (
            "condition.resolved",
            {
                "condition": "few",
                "metric": "",
                "group": {},
                "value": 1.0,
                "firing_seconds": 2.222,
                "reason": "removed from the configuration",
            },
        )
    ]


def test_while_kept_firing_the_instance_follows_the_value_and_a_gone_group_reads_zero() -> None:
    cond = Condition("b", "queued", 2.0, above=True, keep_firing_for=60.0, group_by=("pathway_id",))
    state, _ = run(cond, [(T0, calls(5, pathway="p"))])
    state, found = run(cond, [(T0 + 5, calls(1, pathway="p"))], state)
    [instance] = state.instances.values()
    assert not found and instance.value == 1.0 and instance.holding_since is None and instance.firing_since == T0
    state, found = run(cond, [(T0 + 70, {})], state)
    assert [(k, d["value"]) for _, k, d in found] == [("condition.resolved", 0.0)]


def test_the_edges_of_counting_matching_and_inhibiting() -> None:
    gone = CallState(call=Call(call_id="gone", status=QUEUED), first_seen=T0 - 500, missing=1)
    snapshot = {"gone": gone, **calls(2, first_seen=T0 - 100), **calls(0, 3, pathway="running")}
    oldest_uk = Condition("o", "oldest_queued_seconds", 0.0, above=True, matchers=(parse_matcher('status =~ ".*"'),))
    _, found = evaluate([oldest_uk], ConditionState(), snapshot, [], T0)
    assert [d["value"] for _, d in found] == [100.0]  # the missing call is not active; the matcher path counts too
    per = Condition("p", "oldest_queued_seconds", -1.0, above=True, group_by=("pathway_id",))
    _, found = evaluate([per], ConditionState(), snapshot, [], T0)
    assert sorted((d["group"]["pathway_id"], d["value"]) for _, d in found) == [("pw-1", 100.0), ("running", 0.0)]

    def event(kind: str, cid: str) -> Event:
        return Event(id=cid, type=kind, detected_at=T0, data={"call": call_payload(Call(call_id=cid))})

    started = [event("call.appeared", "a"), event("call.started", "b")]
    snapshot_only = Condition("q", "queued", 100.0, above=True)
    state, _ = evaluate([snapshot_only], ConditionState(), {}, started, T0)
    assert state.marks == []  # no rate condition: no window kept
    rate = Condition("r", "started_per_minute", 0.0, above=True)
    applied = apply(detect(DetectState("i"), _snapshot(DetectState("i")), T0, DetectSettings()), [rate], T0)
    assert applied.events == []  # no start yet
    state, found = evaluate([rate], ConditionState(), {}, started, T0)
    assert [d["value"] for _, d in found] == [0.2] and len(state.marks) == 1  # the appeared one is not a start

    first = Condition("first", "queued", 0.0, above=True, group_by=("pathway_id",), inhibits=("call.started",))
    second = Condition("second", "queued", 0.0, above=True, inhibits=("call.stuck_queued",))
    state, _ = evaluate([first, second], ConditionState(), calls(1), [], T0)
    stuck = Event(id="s", type="call.stuck_queued", detected_at=T0, data={"call": call_payload(Call(call_id="x"))})
    assert inhibited_by(state, [first, second], stuck) == "second"  # the first does not list it: the next is asked
    two_gone, found = evaluate([], state, {}, [], T0 + 1)
    assert sorted(d["condition"] for _, d in found) == ["first", "second"] and not two_gone.instances


SNAPSHOTS = st.lists(
    st.dictionaries(
        st.sampled_from([f"c{i}" for i in range(12)]),
        st.tuples(st.sampled_from([QUEUED, IN_PROGRESS]), st.sampled_from(["p1", "p2", "p3"]), st.booleans()),
        max_size=12,
    ),
    min_size=1,
    max_size=25,
)


@given(SNAPSHOTS, st.integers(1, 2))
def test_counts_kept_between_polls_match_a_count_of_every_call(
    snapshots: list[dict[str, tuple[str, str, bool]]], missing_polls: int
) -> None:
    from notifier.model import Snapshot

    conditions = [
        Condition("q", "queued", 1.0, above=True, group_by=("pathway_id",), keep_firing_for=3.0),
        Condition("a", "active", 2.0, above=False),
        Condition("i", "in_progress", 0.0, above=True, matchers=(parse_matcher('international = "true"'),)),
        Condition("s", "started_per_minute", 0.5, above=False, group_by=("pathway_id", "status")),
    ]
    settings = DetectSettings(missing_polls=missing_polls, announce_existing=True)
    kept = scanned = DetectState("i")
    for step, answer in enumerate(snapshots):
        now = T0 + 5 * step
        snapshot = Snapshot(
            calls={
                cid: Call(call_id=cid, status=status, pathway_id=pathway, international="true" if intl else "false")
                for cid, (status, pathway, intl) in answer.items()
            }
        )
        incremental = apply(detect(kept, snapshot, now, settings), conditions, now, kept.calls)
        full = apply(detect(scanned, snapshot, now, settings), conditions, now)
        assert incremental.events == full.events
        assert incremental.state.conditions == full.state.conditions
        kept, scanned = incremental.state, full.state
