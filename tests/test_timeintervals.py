"""Time intervals: Alertmanager's fields on the local wall clock, checked against a
brute-force reference written from SPEC, across daylight-saving changes."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from itertools import islice
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


def until(entry: dict, instant: str) -> float | None:
    return Muting(mute=(parse_interval("x", [entry]),)).until(at(instant))


def test_month_ranges_include_both_ends() -> None:
    spring = parse_interval("spring", [{"months": ["march:may"]}])
    inside = ("2026-03-01T00:00:00+00:00", "2026-04-15T00:00:00+00:00", "2026-05-31T23:59:00+00:00")
    assert all(spring.active(at(t)) for t in inside)
    assert not spring.active(at("2026-02-28T23:59:00+00:00")) and not spring.active(at("2026-06-01T00:00:00+00:00"))


def test_days_of_month_from_the_first_and_past_the_months_end() -> None:
    week = parse_interval("week", [{"days_of_month": ["1:7"]}])
    assert week.active(at("2026-12-01T00:00:00+00:00")) and week.active(at("2026-12-07T23:59:00+00:00"))
    assert not week.active(at("2026-12-08T00:00:00+00:00"))
    thirtieth = parse_interval("30th", [{"days_of_month": ["30:31"]}])  # February has none: never
    assert not thirtieth.active(at("2026-02-28T12:00:00+00:00")) and thirtieth.active(at("2026-03-30T12:00:00+00:00"))
    whole = parse_interval("whole", [{"days_of_month": ["1:-1"]}])  # first to last: every day
    assert all(whole.active(at(f"2026-02-{d:02}T12:00:00+00:00")) for d in (1, 14, 28))


def test_a_mute_ends_on_either_pass_of_a_repeated_hour() -> None:
    # 1 November 2026, New York: 01:00-02:00 happens twice (EDT, then EST from 06:00Z).
    early = {"location": "America/New_York", "times": [{"start": "00:00", "end": "01:30"}]}
    assert until(early, "2026-11-01T04:30:00+00:00") == at("2026-11-01T05:30:00+00:00")  # 01:30 EDT
    assert until(early, "2026-11-01T06:10:00+00:00") == at("2026-11-01T06:30:00+00:00")  # 01:30 EST


def test_a_mute_ends_at_the_instant_the_clock_jumps_past_its_end() -> None:
    # Forward: 02:00 -> 03:00 in New York (07:00Z), 01:00 -> 02:00 in London (01:00Z); 02:30 and 01:30 never happen.
    ny = {"location": "America/New_York", "times": [{"start": "00:00", "end": "02:30"}]}
    assert until(ny, "2026-03-08T06:00:00+00:00") == at("2026-03-08T07:00:00+00:00")
    london = {"location": "Europe/London", "times": [{"start": "00:00", "end": "01:30"}]}
    assert until(london, "2026-03-29T00:30:00+00:00") == at("2026-03-29T01:00:00+00:00")
    # Back: 03:00 CEST -> 02:00 CET in Berlin (01:00Z), to the second; 02:59 is muted, 02:00 is not.
    berlin = {"location": "Europe/Berlin", "times": [{"start": "02:30", "end": "03:00"}]}
    assert until(berlin, "2026-10-25T00:45:00+00:00") == at("2026-10-25T01:00:00+00:00")
    # Back at midnight: 24:00 -03 -> 23:00 -04 in Santiago (03:00Z); 23:59 is muted, 23:00 is not.
    late = {
        "location": "America/Santiago",
        "times": [{"start": "23:10", "end": "23:20"}, {"start": "23:30", "end": "24:00"}],
    }
    assert until(late, "2026-04-05T02:45:00+00:00") == at("2026-04-05T03:00:00+00:00")


@pytest.mark.parametrize(
    ("entry", "instant", "end"),
    [
        (
            {"location": "America/New_York", "times": [{"start": "20:00", "end": "24:00"}]},
            "2026-03-08T04:50:00+00:00",
            "2026-03-08T05:00:00+00:00",
        ),
        (
            {"location": "America/New_York", "weekdays": ["saturday"]},
            "2026-03-08T04:50:00+00:00",
            "2026-03-08T05:00:00+00:00",
        ),
        (
            {"location": "Europe/London", "weekdays": ["saturday"]},
            "2026-03-28T23:50:00+00:00",
            "2026-03-29T00:00:00+00:00",
        ),
        (
            {"location": "Europe/London", "weekdays": ["saturday"]},
            "2026-10-24T22:50:00+00:00",
            "2026-10-24T23:00:00+00:00",
        ),
    ],
)
def test_a_mute_ending_at_midnight_before_a_daylight_saving_change_ends_at_midnight(
    entry: dict, instant: str, end: str
) -> None:
    assert until(entry, instant) == at(end)


def test_boundaries_are_strictly_after_and_never_repeat() -> None:
    two = parse_interval("two", [{"times": [{"start": "09:00", "end": "17:00"}]}, {"weekdays": ["saturday"]}])
    midnight = at("2026-12-05T00:00:00+00:00")
    first = list(islice(two.boundaries(midnight), 6))
    assert first == [at(f"2026-12-05T{h}:00+00:00") for h in ("09:00", "17:00")] + [
        at(f"2026-12-{d}T{h}:00+00:00") for d, h in (("06", "00:00"), ("06", "09:00"), ("06", "17:00"), ("07", "00:00"))
    ]


def test_outside_several_active_intervals_names_them_all() -> None:
    a = parse_interval("mornings", [{"times": [{"start": "06:00", "end": "09:00"}]}])
    b = parse_interval("evenings", [{"times": [{"start": "18:00", "end": "21:00"}]}])
    assert Muting(active=(a, b)).muted_by(at("2026-12-07T12:00:00+00:00")) == "outside mornings,evenings"


def test_an_interval_needs_an_entry() -> None:
    with pytest.raises(IntervalError) as caught:
        parse_interval("x", [])
    assert (caught.value.key, caught.value.reason, str(caught.value)) == (
        "",
        "needs at least one entry",
        "needs at least one entry",
    )


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        ({"hours": ["1"]}, "[0].hours", "unknown key (keys: days_of_month, location, months, times, weekdays, years)"),
        ({"location": 5}, "[0].location", "must be a string such as America/New_York"),
        ({"times": "09:00-17:00"}, "[0].times", 'must be a list like [{ start = "09:00", end = "17:00" }]'),
        ({"times": [{"start": "09:00"}]}, "[0].times[0]", 'must be { start = "HH:MM", end = "HH:MM" }'),
        (
            {"times": [{"start": 900, "end": "17:00"}]},
            "[0].times[0].start",
            'expected "HH:MM" from "00:00" to "24:00", got 900',
        ),
        (
            {"times": [{"start": "09:00", "end": "24:30"}]},
            "[0].times[0].end",
            'expected "HH:MM" from "00:00" to "24:00", got \'24:30\'',
        ),
        ({"times": [{"start": "24:00", "end": "24:00"}]}, "[0].times[0].start", "24:00 can only end a range"),
        (
            {"times": [{"start": "09:00", "end": "09:00"}]},
            "[0].times[0]",
            "start must be before end; a range across midnight is two: "
            '{ start = "09:00", end = "24:00" }, { start = "00:00", end = "09:00" }',
        ),
        ({"times": []}, "[0].times", "an empty list is never active; leave times out for the whole day"),
        ({"weekdays": []}, "[0].weekdays", 'must be a non-empty list like ["monday:friday"]'),
        (
            {"weekdays": ["1"]},
            "[0].weekdays[0]",
            "'1' is not one of sunday, monday, tuesday, wednesday, thursday, friday, saturday",
        ),
        (
            {"months": ["smarch"]},
            "[0].months[0]",
            "'smarch' is not one of " + ", ".join(calendar.month_name[1:]).lower(),
        ),
        ({"months": ["1:13"]}, "[0].months[0]", "'1:13' is out of range"),
        ({"months": ["may:march"]}, "[0].months[0]", "'may:march': the range's start is after its end"),
        ({"years": ["0"]}, "[0].years[0]", "'0' is out of range"),
        ({"years": ["10000"]}, "[0].years[0]", "'10000' is out of range"),
        ({"days_of_month": []}, "[0].days_of_month", 'must be a non-empty list like ["1:7", "-1"]'),
        (
            {"days_of_month": ["first"]},
            "[0].days_of_month[0]",
            "'first': expected a day (1 to 31, or -1 to -31 from the end) or a range",
        ),
        (
            {"days_of_month": ["32"]},
            "[0].days_of_month[0]",
            "'32': days are 1 to 31, or -1 to -31 counted from the month's end",
        ),
        ({"days_of_month": ["7:1"]}, "[0].days_of_month[0]", "'7:1': the range's start is after its end"),
        (
            {"days_of_month": ["-3:5"]},
            "[0].days_of_month[0]",
            "'-3:5': a range that starts from the month's end must end there too",
        ),
    ],
)
def test_invalid_entries_say_exactly_where_and_why(entry: dict, key: str, reason: str) -> None:
    with pytest.raises(IntervalError) as caught:
        parse_interval("x", [entry])
    assert (caught.value.key, caught.value.reason, str(caught.value)) == (key, reason, reason)


def test_years_run_from_1_to_9999() -> None:
    assert parse_interval("x", [{"years": ["1:9999"]}]).active(at("2026-06-01T00:00:00+00:00"))
