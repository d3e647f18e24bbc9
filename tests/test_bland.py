"""Decoding Bland's answers and the HTTP client, against the simulated API on loopback."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.bland import (
    USER_AGENT,
    ActiveCallsDecoder,
    BlandClient,
    PollError,
    decode_active_calls,
    retry_after_seconds,
)
from notifier.model import call_payload
from notifier.secret import Secret
from notifier.simulator import BlandSimulator, wire_call


def body(entries: list, **extra: object) -> bytes:
    return json.dumps({"data": entries, "errors": None, **extra}).encode()


def test_decodes_bland_entries_and_normalises() -> None:
    entry = wire_call(
        "c1", "IN_PROGRESS", created_ms=1_767_268_800_000, start_time="2026-01-01T12:00:42.000Z", international=True
    )
    snapshot = decode_active_calls(body([entry]))
    assert snapshot.skipped == 0
    payload = call_payload(snapshot.calls["c1"])
    assert payload == {
        "call_id": "c1",
        "user_id": "user-1",
        "from": "+14155550100",
        "to": "+13105550100",
        "objective": "Confirm the appointment",
        "pathway_id": "",
        "status": "IN_PROGRESS",
        "start_time": "2026-01-01T12:00:42.000Z",
        "international": True,
        "created_at": "2026-01-01T12:00:00.000Z",
    }


def test_empty_start_time_and_odd_international_become_null() -> None:
    entry = {**wire_call("c1"), "start_time": "", "international": "maybe", "timestamp": "yesterday"}
    payload = call_payload(decode_active_calls(body([entry])).calls["c1"])
    assert payload["start_time"] is None and payload["international"] is None and payload["created_at"] is None


def test_malformed_entries_are_skipped_and_counted_never_the_whole_poll() -> None:
    entries = [
        wire_call("good"),
        "not an object",
        42,
        None,
        {"status": "QUEUED"},  # no call_id
        {"call_id": "", "status": "QUEUED"},
        {"call_id": 7, "status": "QUEUED"},
        {
            "call_id": "odd",
            "status": "QUEUED",
            "timestamp": 1767268800000,
            "international": False,
            "to": None,
            "objective": {"nested": True},
        },
        wire_call("good"),  # duplicate
    ]
    snapshot = decode_active_calls(body(entries))
    assert sorted(snapshot.calls) == ["good", "odd"]
    assert snapshot.skipped == 7
    odd = call_payload(snapshot.calls["odd"])
    assert odd["created_at"] == "2026-01-01T12:00:00.000Z" and odd["international"] is False
    assert odd["to"] == "" and odd["objective"] == ""


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"data": [{"call_id": "a", "sta', "not valid JSON"),
        (b"<html>maintenance</html>", "not valid JSON"),
        (b'{"data": null, "errors": ["boom"]}', "no call list"),
        (b'{"calls": []}', "no call list"),
        (b'{"data": {"call_id": "a"}}', "not the documented shape"),
        (b"[]", "not the documented shape"),
        (b'"data"', "not the documented shape"),
    ],
)
def test_answers_that_are_not_the_documented_shape_fail_the_poll(raw: bytes, reason: str) -> None:
    with pytest.raises(PollError, match=reason):
        decode_active_calls(raw)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
fields = st.sampled_from(["call_id", "status", "to", "from", "timestamp", "international", "start_time", "x"])
entries = st.one_of(json_values, st.dictionaries(fields, json_values, max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, max_size=8))
def test_any_entry_list_decodes_without_raising(items: list) -> None:
    snapshot = decode_active_calls(body(items))
    assert len(snapshot.calls) + snapshot.skipped == len(items)
    for call_id, call in snapshot.calls.items():
        assert call_id and call.call_id == call_id
        call_payload(call)  # normalisation never raises either


polls = st.lists(
    st.lists(
        st.builds(
            wire_call,
            st.sampled_from(["a", "b", "c", "d"]),
            status=st.sampled_from(["QUEUED", "IN_PROGRESS"]),
            to=st.sampled_from(["+1", "+2"]),
            created_ms=st.just(1_800_000_000_000),
        ),
        max_size=5,
    )
    | st.just(None),  # an answer that fails to decode
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(polls)
def test_the_incremental_decoder_always_sees_what_a_fresh_one_sees(answers: list) -> None:
    """Its shortcuts (an answer the same as the last, entries seen before) never change
    what a poll decodes to; an unchanged call is the very object of the last poll."""
    decoder, last = ActiveCallsDecoder(), None
    for entries in answers:
        raw = b'{"data": {"not": "a list"}}' if entries is None else body(entries)
        try:
            snapshot = decoder.decode(raw)
        except PollError:
            assert entries is None
            continue
        assert snapshot == decode_active_calls(raw)
        if last is not None:
            for call_id, call in snapshot.calls.items():
                if call == last.calls.get(call_id):
                    assert call is last.calls[call_id]
        last = snapshot


def test_an_answer_the_checksum_misses_is_decoded_within_full_every_polls() -> None:
    decoder = ActiveCallsDecoder()
    first, changed = body([wire_call("a")]), body([wire_call("b")])
    decoder.decode(first)
    decoder.decode(first)  # (the checksum is taken from the second answer of a length on)
    assert decoder.decode(first) is decoder.decode(first)  # the same answer: the same snapshot
    # A CRC-32 collision, as if ``changed`` had the checksum of ``first``:
    assert decoder._last is not None
    decoder._last = ((len(changed), __import__("zlib").crc32(changed)), decoder._last[1])
    decoder._repeats = 0
    seen = [list(decoder.decode(changed).calls) for _ in range(ActiveCallsDecoder.FULL_EVERY + 1)]
    assert seen[0] == ["a"] and seen[-1] == ["b"]


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0) == pytest.approx(10)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def client_for(sim: BlandSimulator, timeout: float = 1.0, key: str | None = None) -> BlandClient:
    return BlandClient(sim.base_url, Secret(key or sim.api_key), Secret(sim.org_id), timeout)


async def fetch(sim: BlandSimulator, **kw: object) -> object:
    async with client_for(sim, **kw) as client:  # type: ignore[arg-type]
        answer, seen = await client.fetch_active(lambda answer: answer)
        assert seen is answer  # ``then`` gets the same answer
        return answer


def test_client_sends_auth_headers_and_user_agent(sim: BlandSimulator) -> None:
    sim.set_calls([wire_call("a")])
    result = anyio.run(fetch, sim)
    assert list(result.calls) == ["a"]  # type: ignore[attr-defined]
    path, headers = sim.requests[-1]
    assert path == "/v1/calls/active"
    assert headers["authorization"] == sim.api_key  # no "Bearer"
    assert headers["x-bland-org-id"] == sim.org_id
    assert headers["user-agent"] == USER_AGENT


@pytest.mark.parametrize(
    "fault, reason",
    [
        ("500", "HTTP 500"),
        ("503_html", "HTTP 503"),
        ("429", "HTTP 429"),
        ("timeout", "timed out"),
        ("stall", "timed out"),  # the read timeout applies between chunks of the body too
        ("reset", "GET /v1/calls/active:"),
        ("truncated", "not valid JSON"),
        ("html_200", "not valid JSON"),
        ("data_null", "no call list"),
        ("wrong_shape", "no call list"),
    ],
)
def test_every_fault_kind_is_a_failed_poll_with_a_reason(sim: BlandSimulator, fault: str, reason: str) -> None:
    sim.fail_next(fault, retry_after="9", delay=2.0)
    result = anyio.run(fetch, sim)
    assert isinstance(result, PollError), result
    assert reason in result.reason
    assert sim.api_key not in result.reason
    if fault == "429":
        assert result.retry_after == 9.0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("trickle", "timed out after 1s (no complete answer)"),  # the deadline cuts the socket
        ("trickle_headers", "timed out after 3s (no answer)"),  # no socket yet: the backstop
    ],
)
def test_an_answer_that_keeps_trickling_in_is_cut_off(sim: BlandSimulator, fault: str, reason: str) -> None:
    """Every read gets a byte within 50 ms, so no read ever times out: only the
    per-request deadline ends it. The same client then polls normally."""
    sim.set_calls([wire_call("a")])
    sim.fail_next(fault, delay=30)

    async def two_polls() -> tuple[object, float, object]:
        async with client_for(sim, timeout=1.0) as client:
            started = time.monotonic()
            first, _ = await client.fetch_active(lambda answer: answer)
            elapsed = time.monotonic() - started
            second, _ = await client.fetch_active(lambda answer: answer)
            return first, elapsed, second

    first, elapsed, second = anyio.run(two_polls)
    assert isinstance(first, PollError) and reason in first.reason, first
    assert elapsed < 10  # the trickle would have lasted 30 s (a bound, not a speed check)
    assert list(second.calls) == ["a"]  # type: ignore[attr-defined]


def test_bad_credentials_say_so(sim: BlandSimulator) -> None:
    result = anyio.run(lambda: fetch(sim, key="wrong-key-123"))
    assert isinstance(result, PollError) and result.auth
    assert "credentials" in result.reason and "wrong-key-123" not in result.reason


def test_call_details_are_reduced_to_scalar_outcome_fields(sim: BlandSimulator) -> None:
    outcome = {"status": "completed", "completed": True, "call_length": 2.5, "answered_by": "human",
               "call_ended_by": "USER", "error_message": None}  # fmt: skip
    sim.set_details("gone", {**outcome, "transcripts": [{"text": "hi"}], "to": "+1"})

    async def go() -> object:
        async with client_for(sim) as client:
            return await client.fetch_details("gone")

    assert anyio.run(go) == outcome


def test_client_reuses_one_connection(sim: BlandSimulator) -> None:
    async def go() -> None:
        async with client_for(sim) as client:
            for _ in range(3):
                await client.fetch_active(lambda answer: None)

    anyio.run(go)
    assert len(sim.requests) == 3 and sim.connections == 1
