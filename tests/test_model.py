"""The normalised call that events carry: its fast paths agree with the plain way, and
no upstream text can make it raise."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.model import Call, call_payload, created_at, iso, iso_millis, normal_time, parse_iso

ISO_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

offsets = st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
iso_texts = st.one_of(
    # how Bland and other ISO 8601 writers spell a time, including at the edges of the range
    st.builds(
        lambda dt, spec: dt.isoformat(timespec=spec),
        st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), offsets)),
        st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda dt: dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
    st.text(max_size=40),
)


@settings(max_examples=500)
@given(iso_texts)
def test_normal_time_is_iso_of_parse_iso(text: str) -> None:
    expected = parse_iso(text)
    got = normal_time(text)
    assert got == (None if expected is None else iso(expected))
    assert got is None or ISO_FORM.fullmatch(got)


@settings(max_examples=300)
@given(st.integers(-62_135_596_800_000, 253_402_300_799_999))  # year 1 to year 9999
def test_iso_is_exact_to_the_millisecond(ms: int) -> None:
    reference = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    expected = reference.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_millis(ms) == expected
    assert iso(ms / 1000) == expected  # no millisecond lost to the float


@settings(max_examples=300)
@given(st.builds(Call, call_id=st.text(), timestamp=st.text(), start_time=iso_texts, international=st.text()))
def test_call_payload_never_raises_on_upstream_text(call: Call) -> None:
    payload = call_payload(call)
    for key in ("start_time", "created_at"):
        assert payload[key] is None or ISO_FORM.fullmatch(payload[key])
    assert payload["international"] in (True, False, None)


def test_times_a_datetime_cannot_show_are_unknown() -> None:
    assert parse_iso("0001-01-01T00:00:00+05:00") is None  # year 0 once in UTC
    assert parse_iso("9999-12-31T23:59:59-05:00") is None  # year 10000 once in UTC
    assert created_at(Call(timestamp="999999999999999")) is None  # year 33658
    assert created_at(Call(timestamp="²")) is None  # a digit to str.isdigit(), not to int()
    assert call_payload(Call(timestamp="999999999999999"))["created_at"] is None


def test_bland_times_pass_through_and_others_are_normalised() -> None:
    assert normal_time("2027-01-15T08:00:12.345Z") == "2027-01-15T08:00:12.345Z"
    assert normal_time("2027-01-15T10:00:12+02:00") == "2027-01-15T08:00:12.000Z"
    assert normal_time("2027-02-30T08:00:12.000Z") is None
    assert created_at(Call(timestamp="1800000012345")) == datetime(2027, 1, 15, 8, 0, 12, 345000, UTC).timestamp()
