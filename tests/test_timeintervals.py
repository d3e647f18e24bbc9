"""Time intervals: Alertmanager's fields on the local wall clock, checked against a
brute-force reference written from SPEC, across daylight-saving changes."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.timeintervals import IntervalError, Muting, parse_interval

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def reference(entry: dict, instant: float) -> bool:
    """SPEC, read literally: every field given holds for the local time in the zone."""
    local = datetime.fromtimestamp(instant, ZoneInfo(entry.get("location", "UTC")))
    minute = local.hour * 60 + local.minute
    checks = []
    if "times" in entry:
        spans = [
            (int(t["start"][:2]) * 60 + int(t["start"][3:]), int(t["end"][:2]) * 60 + int(t["end"][3:]))
            for t in entry["times"]
        ]
        checks.append(any(a <= minute < b for a, b in spans))
    if "weekdays" in entry:
        name = DAYS[(local.weekday() + 1) % 7]
        allowed = set()
        for item in entry["weekdays"]:
            a, _, b = item.partition(":")
            allowed.update(DAYS[DAYS.index(a) : DAYS.index(b or a) + 1])
        checks.append(name in allowed)
    if "days_of_month" in entry:
        length = calendar.monthrange(local.year, local.month)[1]
        days = set()
        for item in entry["days_of_month"]:
            a, _, b = item.partition(":")
            first, last = int(a), int(b or a)
            first = length + first + 1 if first < 0 else first
            last = length + last + 1 if last < 0 else last
            if first <= length:
                days.update(range(max(first, 1), min(last, length) + 1))
        checks.append(local.day in days)
    if "months" in entry:
        months = set()
        for item in entry["months"]:
            a, _, b = item.partition(":")
            months.update(range(int(a), int(b or a) + 1))
        checks.append(local.month in months)
    return all(checks)


@st.composite
def entries(draw: st.DrawFn) -> dict:
    entry: dict = {"location": draw(st.sampled_from(ZONES))}
    if draw(st.booleans()):
        spans = []
        for _ in range(draw(st.integers(1, 2))):
            start = draw(st.integers(0, 1439))
            end = draw(st.integers(start + 1, 1440))
            spans.append({"start": f"{start // 60:02}:{start % 60:02}", "end": f"{end // 60:02}:{end % 60:02}"})
        entry["times"] = spans
    if draw(st.booleans()):
        a = draw(st.integers(0, 6))
        b = draw(st.integers(a, 6))
        entry["weekdays"] = [DAYS[a] if a == b else f"{DAYS[a]}:{DAYS[b]}"]
    if draw(st.booleans()):
        day = draw(st.integers(1, 31) | st.integers(-31, -1))
        entry["days_of_month"] = [
            str(day) if draw(st.booleans()) else f"{day}:{draw(st.integers(day, 31)) if day > 0 else -1}"
        ]
    if draw(st.booleans()):
        a = draw(st.integers(1, 12))
        entry["months"] = [f"{a}:{draw(st.integers(a, 12))}"]
    return entry


INSTANTS = st.floats(min_value=at("2025-01-01T00:00:00+00:00"), max_value=at("2028-12-31T00:00:00+00:00"))


@given(entries(), INSTANTS)
def test_membership_matches_the_reference(entry: dict, instant: float) -> None:
    assert parse_interval("x", [entry]).active(instant) == reference(entry, instant)


@given(entries(), INSTANTS, st.floats(0, 59))
def test_a_mute_ends_at_the_first_minute_the_reference_says_it_is_over(
    entry: dict, instant: float, late: float
) -> None:
    interval = parse_interval("x", [entry])
    muting = Muting(mute=(interval,))
    if muting.muted_by(instant) is None:  # start inside the interval: its next beginning
        start = next((b for b in interval.boundaries(instant) if interval.active(b)), None)
        if start is None:
            return
        instant = start + late if interval.active(start + late) else start
    assert reference(entry, instant)
    until = muting.until(instant)
    # Brute force: minute by minute (every change is on a minute), for up to 40 days.
    probe = (instant // 60 + 1) * 60
    for _ in range(40 * 1440):
        if not reference(entry, probe):
            break
        probe += 60
    else:
        return  # longer than the brute force looks; the horizon is tested below
    assert until == probe
    assert all(reference(entry, t) for t in (instant, (instant + probe) / 2, probe - 1))


def test_business_hours_and_nights_across_both_daylight_saving_changes() -> None:
    nights = parse_interval(
        "nights",
        [
            {
                "location": "America/New_York",
                "times": [{"start": "00:00", "end": "08:00"}, {"start": "20:00", "end": "24:00"}],
            }
        ],
    )
    muting = Muting(mute=(nights,))
    # Spring forward (8 March 2026): 07:59 EDT is 11:59Z, where 07:59 EST was 12:59Z the day before.
    assert nights.active(at("2026-03-08T11:59:00+00:00")) and not nights.active(at("2026-03-08T12:00:00+00:00"))
    assert nights.active(at("2026-03-07T12:59:00+00:00")) and not nights.active(at("2026-03-07T13:00:00+00:00"))
    assert muting.until(at("2026-03-08T05:00:00+00:00")) == at("2026-03-08T12:00:00+00:00")
    # Fall back (1 November 2026): the night of the change lasts nine hours in UTC, still ending at 08:00 local.
    assert muting.until(at("2026-11-01T00:30:00+00:00")) == at("2026-11-01T13:00:00+00:00")
    assert muting.until(at("2026-11-01T06:30:00+00:00")) == at("2026-11-01T13:00:00+00:00")  # the repeated hour


def test_active_time_intervals_mute_outside_them_and_name_them() -> None:
    business = parse_interval(
        "business", [{"weekdays": ["monday:friday"], "times": [{"start": "09:00", "end": "17:00"}]}]
    )
    muting = Muting(active=(business,))
    saturday = at("2026-12-05T12:00:00+00:00")
    assert muting.muted_by(saturday) == "outside business"
    assert muting.until(saturday) == at("2026-12-07T09:00:00+00:00")
    assert muting.muted_by(at("2026-12-07T09:00:00+00:00")) is None


def test_days_of_month_count_from_the_end_and_years_limit() -> None:
    last = parse_interval("last", [{"days_of_month": ["-1"], "years": ["2026"]}])
    assert last.active(at("2026-02-28T10:00:00+00:00")) and not last.active(at("2026-02-27T10:00:00+00:00"))
    assert last.active(at("2026-12-31T23:59:00+00:00")) and not last.active(at("2027-01-31T10:00:00+00:00"))
    assert Muting(mute=(parse_interval("always", [{}]),)).until(at("2026-01-01T00:00:00+00:00")) is None


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        (
            {"times": [{"start": "22:00", "end": "06:00"}]},
            "[0].times[0]",
            '{ start = "22:00", end = "24:00" }, { start = "00:00", end = "06:00" }',
        ),
        ({"times": [{"start": "24:00", "end": "24:00"}]}, "[0].times[0].start", "24:00 can only end a range"),
        ({"times": [{"start": "9:00", "end": "10:00"}]}, "[0].times[0].start", 'expected "HH:MM"'),
        ({"weekdays": ["saturday:sunday"]}, "[0].weekdays[0]", 'write ["saturday", "sunday"]'),
        ({"weekdays": ["funday"]}, "[0].weekdays[0]", "'funday' is not one of sunday"),
        ({"days_of_month": ["0"]}, "[0].days_of_month[0]", "days are 1 to 31"),
        ({"months": ["13"]}, "[0].months[0]", "out of range"),
        ({"location": "Mars/Olympus"}, "[0].location", "unknown time zone 'Mars/Olympus'"),
        ({"hours": ["1"]}, "[0].hours", "unknown key"),
    ],
)
def test_invalid_entries_say_where_and_why(entry: dict, key: str, reason: str) -> None:
    with pytest.raises(IntervalError) as caught:
        parse_interval("x", [entry])
    assert caught.value.key == key and reason in caught.value.reason


def test_names_and_numbers_for_months_are_the_same() -> None:
    by_name = parse_interval("x", [{"months": ["december"]}])
    by_number = parse_interval("x", [{"months": ["12"]}])
    for instant in (at("2026-12-15T00:00:00+00:00"), at("2026-11-15T00:00:00+00:00")):
        assert by_name.active(instant) == by_number.active(instant)
    assert datetime.fromtimestamp(at("2026-12-15T00:00:00+00:00"), UTC).month == 12


def test_the_end_of_a_mute_on_a_daylight_saving_night_is_not_hours_late() -> None:
    saturday = Muting(mute=(parse_interval("sat", [{"location": "America/New_York", "weekdays": ["saturday"]}]),))
    assert saturday.until(at("2026-10-31T12:00:00+00:00")) == at("2026-11-01T04:00:00+00:00")  # before fall back
    assert saturday.until(at("2026-03-07T12:00:00+00:00")) == at("2026-03-08T05:00:00+00:00")  # before spring forward
    late = parse_interval("late", [{"location": "America/New_York", "times": [{"start": "22:00", "end": "24:00"}]}])
    assert Muting(mute=(late,)).until(at("2026-03-07T23:30:00-05:00")) == at("2026-03-08T05:00:00+00:00")


def test_touching_ranges_are_one_and_an_always_active_mute_has_no_end() -> None:
    slots = [
        {"start": f"{h:02}:{m:02}", "end": f"{h + (m == 30):02}:{(m + 30) % 60:02}"} for h in range(24) for m in (0, 30)
    ]
    slots[-1]["end"] = "24:00"
    always = parse_interval("a", [{"location": "America/New_York", "times": slots}])
    assert always.entries[0].times == ((0, 1440),)
    assert Muting(mute=(always,)).until(at("2026-12-01T12:00:00+00:00")) is None
