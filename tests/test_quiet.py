"""The pure quieting verdicts: silences before mutes, defer or drop, and planning that
digests only what goes out now."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.quiet import GO, SILENCE_FIELDS, Silence, Verdict, judge, judge_hops, parse_silence_matchers
from notifier.route import PlannedDelivery, RuleError, compile_rule, event_fields, parse_matcher, plan_deliveries
from notifier.timeintervals import Muting, parse_interval
from tests.test_route import ev

MONDAY_NOON = 1797249600.0  # 2026-12-14T12:00:00Z, a Monday
ALWAYS = parse_interval("always", [{}])
WEEKEND = parse_interval("weekend", [{"weekdays": ["saturday", "sunday"]}])


def rule(name: str = "r", targets: tuple[str, ...] = ("t",), **kw: object) -> object:
    return compile_rule(name=name, events=["call.*"], match=[], targets=list(targets), **kw)  # type: ignore[arg-type]


def silence(*matchers: str, starts: float = 0.0, ends: float = 2e9, sid: str = "sil_1") -> Silence:
    return Silence(sid, parse_silence_matchers(matchers), starts, ends, "why", "me", 0.0)


def test_a_silence_matches_on_event_fields_rule_and_target_within_its_window() -> None:
    fields = event_fields(ev(to="+442071234567"))
    uk = silence('to =~ "\\+44.*"', 'target = "t"', starts=100.0, ends=200.0)
    assert judge(rule(), "t", fields, 150.0, [uk]) == Verdict("silenced", "sil_1")
    assert judge(rule(), "other", fields, 150.0, [uk]) == GO  # another target
    assert (
        judge(rule(), "t", fields, 99.9, [uk]) == GO and judge(rule(), "t", fields, 200.0, [uk]) == GO
    )  # [start, end)
    assert judge(rule("x"), "t", fields, 150.0, [silence('rule = "r"')]) == GO
    assert judge(None, "t", fields, 150.0, [silence('rule = ""')]).action == "silenced"  # a rule no longer configured


def test_a_silence_wins_over_a_mute_and_a_mute_drops_or_defers() -> None:
    fields = event_fields(ev())
    muted = rule(muting=Muting(mute=(ALWAYS,)))
    assert judge(muted, "t", fields, MONDAY_NOON, [silence('type = "call.stuck_queued"')]).action == "silenced"
    assert judge(muted, "t", fields, MONDAY_NOON, []) == Verdict("muted", "always")
    weekend = rule(muting=Muting(mute=(WEEKEND,)), when_muted="defer")
    saturday = MONDAY_NOON - 2 * 86400
    assert judge(weekend, "t", fields, saturday, []) == Verdict("deferred", "weekend", MONDAY_NOON - 12 * 3600)
    assert judge(weekend, "t", fields, MONDAY_NOON, []) == GO
    forever = rule(muting=Muting(mute=(ALWAYS,)), when_muted="defer")  # no end: dropped, and said why
    assert judge(forever, "t", fields, MONDAY_NOON, []) == Verdict("muted", "always (no end within 400 days)")


def test_planning_digests_only_what_goes_out_and_records_the_rest_one_by_one() -> None:
    loud = rule("loud", ("chat",), digest_after=1)
    events = [ev(seq=i, call_id=f"c{i}", to="+44" if i % 2 else "+1") for i in range(1, 5)]
    judged = judge_hops(MONDAY_NOON, [silence('to = "+44"')])
    planned = plan_deliveries(events, [loud], frozenset({"chat"}), judged)
    silenced = [p for p in planned if p.status == "silenced"]
    assert [p.event_ids for p in silenced] == [(events[0].id,), (events[2].id,)]
    assert all(p.quieted_by == "sil_1" for p in silenced)
    [digest] = [p for p in planned if p.status == "pending"]
    assert digest.event_ids == (events[1].id, events[3].id) and digest.is_digest
    held = plan_deliveries(events, [rule(muting=Muting(mute=(ALWAYS,)), when_muted="drop")], frozenset(), judged)
    assert {(p.status, p.quieted_by) for p in held} == {("silenced", "sil_1"), ("muted", "always")}


def test_silence_matchers_are_the_rules_and_refuse_unknown_fields() -> None:
    assert parse_silence_matchers(['to =~ "\\+44.*"']) == (parse_matcher('to =~ "\\+44.*"'),)
    with pytest.raises(ValueError, match="no event has a field 'tox'; fields: type, source, call_id"):
        parse_silence_matchers(["tox = 1"])
    with pytest.raises(ValueError, match="at least one matcher"):
        parse_silence_matchers([])
    assert {"rule", "target", "to", "last_error", "previous_status"} <= set(SILENCE_FIELDS)


@given(st.sampled_from(["+442071234567", "+13105550100", "", "+44"]), st.sampled_from(["=", "!=", "=~", "!~"]))
def test_a_silence_holds_exactly_when_the_same_matcher_in_a_rule_would(to: str, op: str) -> None:
    text = f'to {op} "\\+44.*"'
    fields = event_fields(ev(to=to))
    in_rule = compile_rule(name="r", events=["call.*"], match=[text], targets=["t"]).fits("call.stuck_queued", fields)
    silenced = judge(rule(), "t", fields, 1.0, [silence(text)]).action == "silenced"
    assert silenced == in_rule


def test_a_silence_holds_from_its_first_instant_and_on_the_rule_it_names() -> None:
    fields = event_fields(ev())
    assert judge(rule(), "t", fields, 100.0, [silence('target = "t"', starts=100.0, ends=200.0)]).action == "silenced"
    assert judge(rule("r"), "t", fields, 150.0, [silence('rule = "r"')]) == Verdict("silenced", "sil_1")


def test_a_delivery_whose_rule_is_gone_goes_out_unless_a_silence_covers_it() -> None:
    fields = event_fields(ev())
    assert judge(None, "t", fields, 150.0, []) == GO
    assert judge(None, "t", fields, 150.0, [silence('target = "other"')]) == GO


def test_planning_records_each_quieted_hop_with_its_target_rule_and_release() -> None:
    weekend = rule("r", ("a", "b"), muting=Muting(mute=(WEEKEND,)), when_muted="defer")
    saturday = MONDAY_NOON - 2 * 86400
    event = ev()
    planned = plan_deliveries([event], [weekend], frozenset(), judge_hops(saturday, [silence('target = "a"')]))
    assert planned == [
        PlannedDelivery("a", "r", (event.id,), "silenced", "sil_1", None),
        PlannedDelivery("b", "r", (event.id,), "pending", "weekend", MONDAY_NOON - 12 * 3600),
    ]


def test_a_silence_without_matchers_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError) as caught:
        parse_silence_matchers([])
    assert str(caught.value) == "a silence needs at least one matcher, e.g. 'rule = \"stuck calls\"'"


def test_when_muted_is_drop_or_defer() -> None:
    with pytest.raises(RuleError) as caught:
        rule(when_muted="later")
    assert (caught.value.key, caught.value.reason) == ("when_muted", 'must be "drop" or "defer", not \'later\'')


def test_an_inhibited_hop_names_its_condition_after_silences_and_before_mutes() -> None:
    fields = event_fields(ev())
    assert judge(rule(), "t", fields, 1.0, [], "backlog") == Verdict("inhibited", "backlog")
    assert judge(rule(), "t", fields, 1.0, [silence('target = "t"')], "backlog").action == "silenced"
    muted = rule(muting=Muting(mute=(ALWAYS,)))
    assert judge(muted, "t", fields, MONDAY_NOON, [], "backlog") == Verdict("inhibited", "backlog")
    first, second = ev(seq=1), ev(seq=2, call_id="c2")
    hops = judge_hops(1.0, [], lambda event: "backlog" if event.id == first.id else None)
    assert hops(rule(), "t", first) == Verdict("inhibited", "backlog") and hops(rule(), "t", second) == GO


def test_new_silence_refuses_what_could_never_act_with_the_reason() -> None:
    from notifier.quiet import LONGEST_SILENCE, new_silence

    now = 1_000_000.0
    made = new_silence("sil_1", ['rule = "a"'], now, now + 60, "  why  ", " me ", now)
    assert (made.id, made.starts_at, made.ends_at, made.comment, made.author, made.created_at) == (
        "sil_1",
        now,
        now + 60,
        "why",
        "me",
        now,
    )
    assert [str(m) for m in made.matchers] == ['rule = "a"']
    assert new_silence("s", ['rule = "a"'], now, now + LONGEST_SILENCE, "x", "", now).ends_at == now + LONGEST_SILENCE
    for args, reason in [
        ((['rule = "a"'], now, now, "x"), "the silence would end before it starts (or in the past)"),
        ((['rule = "a"'], now - 100, now, "x"), "the silence would end before it starts (or in the past)"),
        ((['rule = "a"'], now + 10, now + 5, "x"), "the silence would end before it starts (or in the past)"),
        ((['rule = "a"'], now, now + LONGEST_SILENCE + 1, "x"), "a silence ends within a hundred years"),
        (
            (["rule =~ .*"], now, now + 60, "x"),
            "these matchers hold for every delivery; silence something in particular",
        ),
        ((['rule = "a"'], now, now + 60, " -- "), "comment: say why, for whoever finds the silence"),
        (([], now, now + 60, "x"), "a silence needs at least one matcher"),
    ]:
        with pytest.raises(ValueError) as caught:
            new_silence("s", *args, "me", now)  # type: ignore[arg-type]
        assert str(caught.value).startswith(reason), caught.value
    assert LONGEST_SILENCE == 100 * 366 * 86400
