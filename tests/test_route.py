"""The pure router: matchers, rule fitting, at-most-once per target, digest planning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.model import EVENT_TYPES, Call, Event, call_payload
from notifier.route import (
    PlannedDelivery,
    RuleError,
    compile_rule,
    event_fields,
    parse_matcher,
    plan_deliveries,
    route,
)


def ev(type_: str = "call.stuck_queued", seq: int = 1, **call_fields: str) -> Event:
    call = Call(
        call_id=call_fields.pop("call_id", "c1"),
        to=call_fields.pop("to", "+13105550100"),
        international=call_fields.pop("international", "false"),
        status="QUEUED",
    )
    data: dict = {"queued_for_seconds": 130.0, "threshold_seconds": 120.0}
    if type_.startswith("call."):
        data = {"call": call_payload(call), **data}
    return Event(
        id=f"evt_t_{seq:010d}",
        type=type_,
        detected_at=0.0,
        data=data,
        call_id=call.call_id if type_.startswith("call.") else None,
    )


@pytest.mark.parametrize(
    "text, fields, expected",
    [
        ('to =~ "\\+1310.*"', {"to": "+13105550100"}, True),
        ('to =~ "\\+1310.*"', {"to": "x+13105550100"}, False),  # fully anchored
        ('to =~ "1310"', {"to": "+13105550100"}, False),
        ("international = false", {"international": "false"}, True),
        ('international != "false"', {"international": "false"}, False),
        ('to !~ "\\+44.*"', {"to": "+13105550100"}, True),
        ('objective = "say \\"hi\\" \\\\ bye"', {"objective": 'say "hi" \\ bye'}, True),
        ('pathway_id = ""', {}, True),  # a missing field compares as the empty string
        ("queued_for_seconds =~ 1[0-9]{2}", {"queued_for_seconds": "130"}, True),
    ],
)
def test_matchers(text: str, fields: dict, expected: bool) -> None:
    assert parse_matcher(text).matches(fields) is expected


@pytest.mark.parametrize("text", ["to", "to == x", '= "x"', 'to = "x', 'to = "a"b"', "to =~ ("])
def test_bad_matchers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_matcher(text)


def test_event_fields_cover_call_and_scalar_data() -> None:
    fields = event_fields(ev())
    assert fields["type"] == "call.stuck_queued" and fields["to"] == "+13105550100"
    assert fields["international"] == "false" and fields["queued_for_seconds"] == "130"
    assert "call" not in fields


def test_rule_errors_name_the_key() -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule(name="r", events=["call.*"], match=["nope = 1"], targets=["t"])
    assert caught.value.key == "match[0]"
    with pytest.raises(RuleError) as caught:
        compile_rule(name="r", events=["call.started", "call.ended"], match=[], targets=["t"])
    assert caught.value.key == "events[1]"


def test_every_fitting_rule_fires_and_a_target_gets_an_event_once() -> None:
    rules = [
        compile_rule(name="stuck", events=["call.stuck_queued"], match=['to =~ "\\+1310.*"'], targets=["ops", "crm"]),
        compile_rule(name="all", events=["*"], match=[], targets=["crm", "audit"]),
        compile_rule(name="intl", events=["call.*"], match=["international = true"], targets=["intl"]),
    ]
    assert [(r.rule.name, r.target) for r in route(ev(), rules)] == [
        ("stuck", "ops"),
        ("stuck", "crm"),
        ("all", "audit"),
    ]
    assert [(r.rule.name, r.target) for r in route(ev(to="+4420"), rules)] == [("all", "crm"), ("all", "audit")]
    assert [r.target for r in route(ev("source.unreachable"), rules)] == ["crm", "audit"]


target_names = st.sampled_from(["a", "b", "c"])
rules_strategy = st.lists(
    st.tuples(
        st.sampled_from(["*", "call.*", "call.stuck_queued", "source.*"]),
        st.lists(st.sampled_from(['to =~ "\\+1.*"', "international = false", 'status != "QUEUED"']), max_size=2),
        st.lists(target_names, min_size=1, max_size=3, unique=True),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(rules_strategy, st.sampled_from(EVENT_TYPES), st.sampled_from(["+13105550100", "+4420"]))
def test_routing_properties(spec: list, event_type: str, to: str) -> None:
    rules = []
    for i, (pattern, match, targets) in enumerate(spec):
        try:
            rules.append(compile_rule(name=f"r{i}", events=[pattern], match=match, targets=targets))
        except RuleError:
            continue  # e.g. a call field on source.* rules: rejected at load, not routed
    event = ev(event_type, to=to)
    routes = route(event, rules)
    targets = [r.target for r in routes]
    assert len(targets) == len(set(targets))  # at most once per target
    fields = event_fields(event)
    fitting = [r for r in rules if r.fits(event.type, fields)]
    assert set(targets) == {t for r in fitting for t in r.targets}  # every fitting rule fires
    for hop in routes:  # the first fitting rule naming the target wins
        assert hop.rule == next(r for r in fitting if hop.target in r.targets)


def test_digest_planning() -> None:
    rules = [compile_rule(name="r", events=["*"], match=[], targets=["slack", "hook"], digest_after=3)]
    events = [ev(seq=i, call_id=f"c{i}") for i in range(1, 6)]
    planned = plan_deliveries(events, rules, digestible=frozenset({"slack"}))
    assert PlannedDelivery("slack", "r", tuple(e.id for e in events)) in planned
    assert [p.event_ids for p in planned if p.target == "hook"] == [(e.id,) for e in events]
    few = plan_deliveries(events[:3], rules, digestible=frozenset({"slack"}))
    assert all(not p.is_digest for p in few)
    off = [compile_rule(name="r", events=["*"], match=[], targets=["slack"], digest_after=0)]
    assert len(plan_deliveries(events, off, digestible=frozenset({"slack"}))) == 5
