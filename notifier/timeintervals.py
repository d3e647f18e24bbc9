"""Time intervals, as Alertmanager defines them: when a rule is muted (or active).

An interval is a list of entries; it is active when any entry is, and an entry when
every field it gives holds for the instant's local time in the entry's ``location``.
Fields are evaluated on the local wall clock, so a window of ``00:00``-``08:00`` in
``America/New_York`` stays those hours across daylight-saving changes. Pure: an
instant in, a verdict out.
"""

from __future__ import annotations

import calendar
import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")  # Alertmanager's order
MONTHS = tuple(name.lower() for name in calendar.month_name[1:])
#: How far ahead the end of a mute is looked for; past it, the mute has "no end in sight".
HORIZON_DAYS = 400
_TIME = re.compile(r"([01]\d|2[0-4]):([0-5]\d)")


class IntervalError(ValueError):
    """An entry that cannot work; ``key`` is the key path below the entry."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class Entry:
    """One entry of an interval; ``None`` fields are not constrained. Ranges are inclusive
    except ``times``, which are ``[start, end)`` in minutes of the local day."""

    zone: tzinfo
    times: tuple[tuple[int, int], ...] | None = None
    weekdays: tuple[tuple[int, int], ...] | None = None  # 0 = sunday
    days_of_month: tuple[tuple[int, int], ...] | None = None  # negative: from the month's end
    months: tuple[tuple[int, int], ...] | None = None
    years: tuple[tuple[int, int], ...] | None = None

    def active(self, instant: float) -> bool:
        local = datetime.fromtimestamp(instant, self.zone)
        return self._day_fits(local.date()) and self._minute_fits(local.hour * 60 + local.minute)

    def _minute_fits(self, minute: int) -> bool:
        return self.times is None or any(start <= minute < end for start, end in self.times)

    def _day_fits(self, day: date) -> bool:
        weekday = (day.weekday() + 1) % 7  # Python: monday = 0; here, as Alertmanager: sunday = 0
        if self.weekdays is not None and not any(a <= weekday <= b for a, b in self.weekdays):
            return False
        if self.months is not None and not any(a <= day.month <= b for a, b in self.months):
            return False
        if self.years is not None and not any(a <= day.year <= b for a, b in self.years):
            return False
        return self.days_of_month is None or any(_in_month(day, a, b) for a, b in self.days_of_month)

    def boundaries(self, day: date) -> Iterator[float]:
        """Instants of this local day where the entry may change: midnight, each
        ``times`` edge on a day that fits, and a daylight-saving jump (each wall time in
        both folds: one that does not exist, or exists twice, is covered either way)."""
        minutes = {0}
        if self.times is not None and self._day_fits(day):
            for start, end in self.times:
                minutes.update((start, end % 1440))
        for minute in sorted(minutes):
            wall = datetime(day.year, day.month, day.day, minute // 60, minute % 60)
            for fold in (0, 1):
                yield wall.replace(tzinfo=self.zone, fold=fold).timestamp()
        start = datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()
        end = start + 86400 + 7200  # past the next midnight, whatever the day's length
        if _offset(self.zone, start) != _offset(self.zone, end):
            yield _transition(self.zone, start, end)


def _offset(zone: tzinfo, instant: float) -> timedelta | None:
    return datetime.fromtimestamp(instant, zone).utcoffset()


def _transition(zone: tzinfo, low: float, high: float) -> float:
    """The instant in [low, high) where the zone's offset changes (bisection, to the second)."""
    before = _offset(zone, low)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, middle) == before:
            low = middle
        else:
            high = middle
    return high


def _in_month(day: date, begin: int, end: int) -> bool:
    """Alertmanager's rule: negative days count from the month's end; a range is
    clamped to the month, and one starting after the month's last day never holds."""
    length = calendar.monthrange(day.year, day.month)[1]
    first = length + begin + 1 if begin < 0 else begin
    last = length + end + 1 if end < 0 else end
    if first > length:
        return False
    return max(first, 1) <= day.day <= min(last, length)


@dataclass(frozen=True)
class TimeInterval:
    name: str
    entries: tuple[Entry, ...]

    def active(self, instant: float) -> bool:
        return any(entry.active(instant) for entry in self.entries)

    def boundaries(self, after: float) -> Iterator[float]:
        """Candidate instants after ``after`` where activity may change, in order."""
        streams = [_entry_boundaries(entry, after) for entry in self.entries]
        previous = None
        for instant in heapq.merge(*streams):
            if instant > after and instant != previous:
                previous = instant
                yield instant


def _entry_boundaries(entry: Entry, after: float) -> Iterator[float]:
    """In order: a day's candidates can fall a few hours into the next (a jump found
    ahead, a wall time shifted by its fold), so they wait in a heap until no later day
    can bring an earlier one."""
    day = datetime.fromtimestamp(after, entry.zone).date() - timedelta(days=1)
    pending: list[float] = []
    for offset in range(HORIZON_DAYS):
        current = day + timedelta(days=offset)
        for instant in entry.boundaries(current):
            heapq.heappush(pending, instant)
        following = current + timedelta(days=1)
        safe = datetime(following.year, following.month, following.day, tzinfo=entry.zone).timestamp() - 4 * 3600
        while pending and pending[0] < safe:
            yield heapq.heappop(pending)
    while pending:
        yield heapq.heappop(pending)


@dataclass(frozen=True)
class Muting:
    """A rule's ``mute_time_intervals`` and ``active_time_intervals``."""

    mute: tuple[TimeInterval, ...] = ()
    active: tuple[TimeInterval, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.mute or self.active)

    def muted_by(self, instant: float) -> str | None:
        """The name of what mutes the rule now (an interval, or ``outside NAME``), or None."""
        for interval in self.mute:
            if interval.active(instant):
                return interval.name
        if self.active and not any(interval.active(instant) for interval in self.active):
            return "outside " + ",".join(interval.name for interval in self.active)
        return None

    def until(self, instant: float) -> float | None:
        """When a mute in force at ``instant`` ends (None: not within the horizon)."""
        streams = [interval.boundaries(instant) for interval in self.mute + self.active]
        for candidate in heapq.merge(*streams):
            if self.muted_by(candidate) is None:
                return candidate
        return None


NEVER_MUTED = Muting()


# -- parsing the config's [[time_intervals.NAME]] entries -------------------------------


def parse_interval(name: str, entries: Sequence[Mapping[str, Any]]) -> TimeInterval:
    """Validate one ``[[time_intervals.NAME]]`` list; errors name the entry and key."""
    if not entries:
        raise IntervalError("", "needs at least one entry")
    return TimeInterval(name, tuple(_entry(index, raw) for index, raw in enumerate(entries)))


_KEYS = {"location", "times", "weekdays", "days_of_month", "months", "years"}


def _entry(index: int, raw: Mapping[str, Any]) -> Entry:
    here = f"[{index}]"
    unknown = set(raw) - _KEYS
    if unknown:
        raise IntervalError(f"{here}.{sorted(unknown)[0]}", f"unknown key (keys: {', '.join(sorted(_KEYS))})")
    location = raw.get("location", "UTC")
    if not isinstance(location, str):
        raise IntervalError(f"{here}.location", "must be a string such as America/New_York")
    try:
        zone: tzinfo = UTC if location == "UTC" else ZoneInfo(location)
    except (ZoneInfoNotFoundError, ValueError):
        raise IntervalError(
            f"{here}.location", f"unknown time zone {location!r} (an IANA name such as Europe/London)"
        ) from None
    return Entry(
        zone=zone,
        times=_times(raw["times"], f"{here}.times") if "times" in raw else None,
        weekdays=_ranges(raw, "weekdays", here, lambda v: _named(v, WEEKDAYS, 0), (0, 6)),
        days_of_month=_days(raw["days_of_month"], f"{here}.days_of_month") if "days_of_month" in raw else None,
        months=_ranges(raw, "months", here, lambda v: _named(v, MONTHS, 1), (1, 12)),
        years=_ranges(raw, "years", here, int, (1, 9999)),
    )


def _times(raw: Any, key: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, list):
        raise IntervalError(key, 'must be a list like [{ start = "09:00", end = "17:00" }]')
    found = []
    for index, item in enumerate(raw):
        where = f"{key}[{index}]"
        if not isinstance(item, dict) or set(item) != {"start", "end"}:
            raise IntervalError(where, 'must be { start = "HH:MM", end = "HH:MM" }')
        start, end = _minute(item["start"], f"{where}.start"), _minute(item["end"], f"{where}.end")
        if start >= 1440:
            raise IntervalError(f"{where}.start", "24:00 can only end a range")
        if start >= end:
            raise IntervalError(
                where,
                f"start must be before end; a range across midnight is two: "
                f'{{ start = "{item["start"]}", end = "24:00" }}, {{ start = "00:00", end = "{item["end"]}" }}',
            )
        found.append((start, end))
    if not found:
        raise IntervalError(key, "an empty list is never active; leave times out for the whole day")
    merged: list[tuple[int, int]] = []  # touching ranges as one: fewer edges to look at
    for start, end in sorted(found):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _minute(value: Any, key: str) -> int:
    found = _TIME.fullmatch(value) if isinstance(value, str) else None
    if found is None or (found.group(1) == "24" and found.group(2) != "00"):
        raise IntervalError(key, f'expected "HH:MM" from "00:00" to "24:00", got {value!r}')
    return int(found.group(1)) * 60 + int(found.group(2))


def _named(value: str, names: tuple[str, ...], first: int) -> int:
    text = value.strip().lower()
    if text in names:
        return names.index(text) + first
    if text.isdigit() and names is MONTHS:
        return int(text)
    raise ValueError(f"{value!r} is not one of {', '.join(names)}")


def _ranges(raw: Mapping[str, Any], name: str, here: str, read: Any, bounds: tuple[int, int]) -> Any:
    """``["monday:friday", "sunday"]`` -> ((1, 5), (0, 0)); inclusive, start <= end."""
    if name not in raw:
        return None
    found = []
    for where, text in _items(raw[name], f"{here}.{name}", '["monday:friday"]'):
        first, _, last = text.partition(":")
        try:
            start, end = read(first), read(last or first)
        except ValueError as exc:
            raise IntervalError(where, str(exc)) from None
        if not (bounds[0] <= start <= bounds[1] and bounds[0] <= end <= bounds[1]):
            raise IntervalError(where, f"{text!r} is out of range")
        if start > end:
            hint = ' (weeks start on sunday: write ["saturday", "sunday"])' if name == "weekdays" else ""
            raise IntervalError(where, f"{text!r}: the range's start is after its end{hint}")
        found.append((start, end))
    return tuple(found)


def _items(values: Any, key: str, example: str) -> Iterator[tuple[str, str]]:
    """(key path, text) of each item of a list field, which must not be empty."""
    if not isinstance(values, list) or not values:
        raise IntervalError(key, f"must be a non-empty list like {example}")
    for index, value in enumerate(values):
        yield f"{key}[{index}]", str(value)


def _days(values: Any, key: str) -> tuple[tuple[int, int], ...]:
    found = []
    for where, text in _items(values, key, '["1:7", "-1"]'):
        match = re.fullmatch(r"(-?\d+)(?::(-?\d+))?", text.strip())
        if match is None:
            raise IntervalError(where, f"{text!r}: expected a day (1 to 31, or -1 to -31 from the end) or a range")
        start, end = int(match.group(1)), int(match.group(2) or match.group(1))
        if not all(1 <= abs(day) <= 31 for day in (start, end)):
            raise IntervalError(where, f"{text!r}: days are 1 to 31, or -1 to -31 counted from the month's end")
        if (start > 0) == (end > 0) and start > end:
            raise IntervalError(where, f"{text!r}: the range's start is after its end")
        if start < 0 < end:
            raise IntervalError(where, f"{text!r}: a range that starts from the month's end must end there too")
        found.append((start, end))
    return tuple(found)
