"""Cron schedules in an IANA time zone: the text is checked once (`CronSchedule.parse`), then
its ticks are computed as UTC instants, correctly across daylight-saving changes.

The text has five fields (minute hour day-of-month month day-of-week) or six with the SECONDS
FIRST (`*/10 * * * * *` is every ten seconds, `30 * * * * *` second 30 of every minute). Names
(JAN, MON), `L` (last day of the month), `MON#2` and `L5` (second Monday, last Friday) and the
aliases @hourly @daily @midnight @weekly @monthly @yearly @annually are accepted. croniter checks
each field and expands it into the values it selects; the ticks are computed here, on wall-clock
times of the zone, because croniter's own DST adjustment moves ticks (the tick after a daily
02:30 on the autumn change lands at 03:30 the next day). When both day fields are restricted, a
day matching either one matches (standard cron).

Daylight saving, as Vixie cron does it:
- a wall-clock time skipped by a spring-forward change runs once, at the end of the gap
  (Europe/Berlin, 2027-03-28: a daily 02:30 runs at 03:00 CEST = 01:00Z); several skipped times
  collapse into that single run;
- a wall-clock time repeated by a fall-back change runs once, at its first occurrence
  (Europe/Berlin, 2027-10-31: a daily 02:30 runs at 02:30 CEST = 00:30Z, not again at 02:30 CET);
- except when the hour field selects every hour (`*`, and the same set written `*/1` or `0-23`):
  such a schedule runs more often than hourly and keeps running in real time through the
  repeated hour (`*/10 * * * *` fires every ten minutes from 00:00Z to 02:00Z on 2027-10-31,
  without a hole). `*/2` and other hour lists are fixed times: their repeated times run once.
An instant fires once however many wall-clock times map to it, so ticks strictly increase.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from croniter.croniter import (  # type: ignore[import-untyped]
    EXPRESSIONS,
    CroniterError,
    croniter,
    hash_expression_re,
)

MAX_EXPRESSION_LENGTH = 200
ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31 or L"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, MON#2, L5"),
)
_SHAPES = "5 fields (minute hour day-of-month month day-of-week) or 6 with the seconds first"
# The Gregorian calendar repeats every 400 years: a schedule that fires, fires within that.
_MAX_MONTHS = 12 * 401
_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """`field` is "cron" or "timezone"; str(error) is a human message naming the problem."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CronSchedule:
    """A checked cron expression in a time zone; building one (or `parse`) raises CronError."""

    expression: str  # as given (normalised whitespace)
    timezone: str  # IANA name as given
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _times: _WallTimes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", _compile(self.expression))
        object.__setattr__(self, "_zone", _load_zone(self.timezone))

    @classmethod
    def parse(cls, expression: str, timezone: str) -> CronSchedule:
        if not isinstance(expression, str):
            raise CronError("cron", "the cron expression must be text")
        if len(expression) > MAX_EXPRESSION_LENGTH:
            raise CronError(
                "cron", f"the cron expression is longer than {MAX_EXPRESSION_LENGTH} characters"
            )
        return cls(" ".join(expression.split()), timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after `after` (aware), as an aware UTC datetime."""
        after = _as_utc(after, "after")
        local = after.astimezone(self._zone)
        wall = local.replace(tzinfo=None, fold=0)
        candidate = self._times.after(wall)
        if local.fold == 0 and self._every_hour and self._is_repeated(wall):
            # `after` is in the first pass of a repeated span: the matches left in this pass come
            # first, then the second pass starts over at the beginning of the span.
            start, end = self._repeated_span(wall)
            if candidate < end:
                return self._instants(candidate)[0]
            again = self._times.at_or_after(start)
            if again < end:
                return self._instants(again)[1]
        while True:
            for instant in self._instants(candidate):
                if instant > after:
                    return instant
            # Only a repeated time whose second pass does not run (and `after` is in that second
            # pass) gets here: the next candidate is past the repeated span.
            candidate = self._times.at_or_after(self._repeated_span(candidate)[1])

    def next_runs(self, after: datetime, count: int = 5) -> list[datetime]:
        """The next `count` ticks after `after`, oldest first."""
        ticks: list[datetime] = []
        for _ in range(count):
            after = self.next_after(after)
            ticks.append(after)
        return ticks

    def previous_before(self, before: datetime, limit: int, not_before: datetime) -> list[datetime]:
        """Up to `limit` ticks t with not_before <= t < before, newest first (for catch-up after
        an outage). It walks back from `before`: at most `limit` + 1 ticks, however far back
        `not_before` is."""
        before = _as_utc(before, "before")
        not_before = _as_utc(not_before, "not_before")
        # A local date is within a day of the UTC one; the search stops two days below it.
        floor = date.fromordinal(max(1, not_before.toordinal() - 2))
        ticks: list[datetime] = []
        while len(ticks) < limit:
            tick = self._previous(before, floor)
            if tick is None or tick < not_before:
                break
            ticks.append(tick)
            before = tick
        return ticks

    def _previous(self, before: datetime, floor: date) -> datetime | None:
        """The last tick strictly before `before`, or None when there is none since `floor`."""
        local = before.astimezone(self._zone)
        wall = local.replace(tzinfo=None, fold=0)
        candidate = self._times.before(wall, floor)
        if local.fold == 1 and self._is_repeated(wall):
            # `before` is in the second pass of a repeated span: before it come this pass's
            # earlier matches (if they run twice), then the whole first pass.
            start, end = self._repeated_span(wall)
            if self._every_hour and candidate is not None and candidate >= start:
                return self._instants(candidate)[1]
            candidate = self._times.before(end, floor)
            if candidate is not None and candidate >= start:
                return self._instants(candidate)[0]
        while candidate is not None:
            for instant in reversed(self._instants(candidate)):
                if instant < before:
                    return instant
            # Only a skipped time gets here, whose run (the end of its gap) is `before` itself:
            # the other times of that gap run there too, so continue below the gap.
            candidate = self._times.before(self._gap_start(candidate), floor)
        return None

    @property
    def _every_hour(self) -> bool:
        return len(self._times.hours) == 24

    def _offsets(self, wall: datetime) -> tuple[timedelta, timedelta]:
        """The UTC offsets of `wall` read as its first and as its second occurrence (PEP 495)."""
        first = wall.replace(tzinfo=self._zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=self._zone, fold=1).utcoffset()
        assert first is not None  # a ZoneInfo always has an offset
        assert second is not None
        return first, second

    def _is_repeated(self, wall: datetime) -> bool:
        first, second = self._offsets(wall)
        return first > second

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        """The instants at which a matching wall-clock time runs, oldest first."""
        first, second = self._offsets(wall)
        if first == second:
            return (_utc(wall - first),)
        if first > second:  # repeated by a fall-back change
            if self._every_hour:
                return _utc(wall - first), _utc(wall - second)
            return (_utc(wall - first),)
        # Skipped by a spring-forward change: it runs when the gap ends.
        return (self._change(_utc(wall - second), _utc(wall - first)),)

    def _repeated_span(self, wall: datetime) -> tuple[datetime, datetime]:
        """The wall-clock span [start, end) that a fall-back change repeats, `wall` inside it."""
        first, second = self._offsets(wall)
        change = self._change(_utc(wall - first), _utc(wall - second)).replace(tzinfo=None)
        return change + second, change + first

    def _gap_start(self, wall: datetime) -> datetime:
        """The first wall-clock time of the gap that `wall` is in (or `wall` when not skipped)."""
        first, second = self._offsets(wall)
        if first >= second:
            return wall
        return self._change(_utc(wall - second), _utc(wall - first)).replace(tzinfo=None) + first

    def _change(self, low: datetime, high: datetime) -> datetime:
        """The instant in (low, high] where the zone's offset changes (once) to high's offset."""
        target = high.astimezone(self._zone).utcoffset()
        low = low.replace(microsecond=0)  # changes happen on whole seconds
        below, above = 0, int((high - low).total_seconds())
        while above - below > 1:  # about 12 steps for a one-hour change
            middle = (below + above) // 2
            if (low + timedelta(seconds=middle)).astimezone(self._zone).utcoffset() == target:
                above = middle
            else:
                below = middle
        return low + timedelta(seconds=above)


class _WallTimes:
    """The wall-clock times a cron expression selects: naive datetimes, whole seconds."""

    def __init__(self, seconds: tuple[int, ...], expanded: list[list[Any]], nth: dict[Any, Any]):
        self.seconds = seconds
        self.minutes = _values(expanded[0], 0, 59)
        self.hours = _values(expanded[1], 0, 23)
        self.months = frozenset(_values(expanded[3], 1, 12))
        days_of_month = expanded[2]
        self._all_days_of_month = "*" in days_of_month
        self._last_day = "l" in days_of_month
        self._days_of_month = frozenset(int(d) for d in days_of_month if d not in ("*", "l"))
        self._all_weekdays = "*" in expanded[4] and not nth
        self._nth = {int(weekday) % 7: set(which) for weekday, which in nth.items()}
        weekdays = {int(w) % 7 for w in _values(expanded[4], 0, 6)}  # 7 is Sunday too
        self._weekdays = frozenset(weekdays - self._nth.keys())
        # A month's matching days depend only on its length and the weekday of its first day.
        self._days_by_shape = {
            (length, first): self._matching_days(length, first)
            for length in (28, 29, 30, 31)
            for first in range(7)
        }

    def ever_matches(self) -> bool:
        """Whether some calendar day matches (every month shape occurs within 400 years)."""
        for month in self.months:
            lengths = (28, 29) if month == 2 else (calendar.monthrange(2001, month)[1],)
            if any(self._days_by_shape[(n, first)] for n in lengths for first in range(7)):
                return True
        return False

    def after(self, wall: datetime) -> datetime:
        """The first selected time strictly after `wall`."""
        return self.at_or_after(wall.replace(microsecond=0) + _SECOND)

    def before(self, wall: datetime, floor: date) -> datetime | None:
        """The last selected time strictly before `wall`, or None if none since `floor`'s month."""
        whole = wall.replace(microsecond=0)
        return self.at_or_before(whole if whole < wall else whole - _SECOND, floor)

    def at_or_after(self, wall: datetime) -> datetime:
        year, month, day = wall.year, wall.month, wall.day
        if month in self.months and day in self._days(year, month):
            clock = self._clock_at_or_after(wall.hour, wall.minute, wall.second)
            if clock is not None:
                return datetime(year, month, day, *clock)
        day += 1
        for _ in range(_MAX_MONTHS):
            if month in self.months:
                days = self._days(year, month)
                i = bisect_left(days, day)
                if i < len(days):
                    return datetime(
                        year, month, days[i], self.hours[0], self.minutes[0], self.seconds[0]
                    )
            year, month, day = (year, month + 1, 1) if month < 12 else (year + 1, 1, 1)
        raise AssertionError("unreachable: a schedule that never fires is refused by parse()")

    def at_or_before(self, wall: datetime, floor: date) -> datetime | None:
        year, month, day = wall.year, wall.month, wall.day
        if month in self.months and day in self._days(year, month):
            clock = self._clock_at_or_before(wall.hour, wall.minute, wall.second)
            if clock is not None:
                return datetime(year, month, day, *clock)
        day -= 1
        while (year, month) >= (floor.year, floor.month):
            if month in self.months:
                days = self._days(year, month)
                i = bisect_right(days, day) - 1
                if i >= 0:
                    return datetime(
                        year, month, days[i], self.hours[-1], self.minutes[-1], self.seconds[-1]
                    )
            year, month, day = (year, month - 1, 31) if month > 1 else (year - 1, 12, 31)
        return None

    def _days(self, year: int, month: int) -> tuple[int, ...]:
        first_weekday, length = calendar.monthrange(year, month)
        return self._days_by_shape[(length, (first_weekday + 1) % 7)]  # cron counts from Sunday

    def _matching_days(self, length: int, first: int) -> tuple[int, ...]:
        """The matching days of a month of `length` days whose first day is weekday `first`."""
        by_date = {d for d in self._days_of_month if d <= length}
        if self._last_day:
            by_date.add(length)
        by_weekday = {d for d in range(1, length + 1) if (first + d - 1) % 7 in self._weekdays}
        for weekday, which in self._nth.items():
            occurrences = range(1 + (weekday - first) % 7, length + 1, 7)
            for n in which:
                if n == "l":
                    by_weekday.add(occurrences[-1])
                elif int(n) <= len(occurrences):
                    by_weekday.add(occurrences[int(n) - 1])
        if self._all_days_of_month and self._all_weekdays:
            days: set[int] = set(range(1, length + 1))
        elif self._all_days_of_month:
            days = by_weekday
        elif self._all_weekdays:
            days = by_date
        else:
            days = by_date | by_weekday
        return tuple(sorted(days))

    def _clock_at_or_after(
        self, hour: int, minute: int, second: int
    ) -> tuple[int, int, int] | None:
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        h = bisect_left(hours, hour)
        if h < len(hours) and hours[h] == hour:
            m = bisect_left(minutes, minute)
            if m < len(minutes) and minutes[m] == minute:
                s = bisect_left(seconds, second)
                if s < len(seconds):
                    return hour, minute, seconds[s]
                m += 1
            if m < len(minutes):
                return hour, minutes[m], seconds[0]
            h += 1
        if h < len(hours):
            return hours[h], minutes[0], seconds[0]
        return None

    def _clock_at_or_before(
        self, hour: int, minute: int, second: int
    ) -> tuple[int, int, int] | None:
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        h = bisect_right(hours, hour) - 1
        if h >= 0 and hours[h] == hour:
            m = bisect_right(minutes, minute) - 1
            if m >= 0 and minutes[m] == minute:
                s = bisect_right(seconds, second) - 1
                if s >= 0:
                    return hour, minute, seconds[s]
                m -= 1
            if m >= 0:
                return hour, minutes[m], seconds[-1]
            h -= 1
        if h >= 0:
            return hours[h], minutes[-1], seconds[-1]
        return None


@lru_cache(maxsize=1024)
def _compile(expression: str) -> _WallTimes:
    text = " ".join(expression.split())
    if not text:
        raise CronError("cron", "the cron expression is empty")
    if text.startswith("@"):
        return _compile_alias(text)
    tokens = text.split()
    if len(tokens) == 7:
        raise CronError("cron", f"a year field (7 fields) is not supported: use {_SHAPES}")
    if len(tokens) not in (5, 6):
        raise CronError("cron", f"expected {_SHAPES}, got {len(tokens)} fields")
    seconds: tuple[int, ...] = (0,)
    if len(tokens) == 6:
        seconds = _values(_check_field(tokens.pop(0), 0, "second", "0-59"), 0, 59)
    for position, (token, (name, allowed)) in enumerate(zip(tokens, _FIELDS, strict=True)):
        _check_field(token, position, name, allowed)
    times = _WallTimes(seconds, *_expand(" ".join(tokens)))
    if not times.ever_matches():
        raise CronError("cron", f"{text!r} never fires: no calendar day matches its day fields")
    return times


def _compile_alias(text: str) -> _WallTimes:
    if text.lower() == "@reboot":
        raise CronError("cron", "@reboot is not supported: a trigger runs on a schedule of times")
    if text.lower() not in ALIASES:
        raise CronError("cron", f"unknown alias {text!r}: use one of {', '.join(ALIASES)}")
    return _compile(ALIASES[text.lower()])


def _check_field(token: str, position: int, name: str, allowed: str) -> list[Any]:
    """The values of one field, expanded alone (so that an error can name the field)."""
    if hash_expression_re.match(token.lower()):
        raise CronError(
            "cron", f"the {name} field {token!r}: hashed and random values (H, R) are not supported"
        )
    fields = ["*"] * 5
    fields[position] = token
    try:
        return _expand(" ".join(fields))[0][position]
    except (CroniterError, ValueError, TypeError, LookupError):
        raise CronError(
            "cron",
            f"the {name} field {token!r} is not valid"
            f" (allowed: {allowed}, with lists, ranges and steps)",
        ) from None


def _expand(text: str) -> tuple[list[list[Any]], dict[Any, Any]]:
    try:
        expanded, nth = croniter.expand(text)
        return expanded, nth
    finally:
        # croniter memoises every expression it expands in a module dict that never shrinks;
        # user input would grow it without bound.
        EXPRESSIONS.pop((text, None, False), None)


def _values(column: list[Any], low: int, high: int) -> tuple[int, ...]:
    if "*" in column:
        return tuple(range(low, high + 1))
    return tuple(sorted({int(v) for v in column}))


def _load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise CronError("timezone", "the time zone is empty")
    # Only names of the zone database: no paths, and not "localtime" (whatever this machine uses).
    if name == "localtime" or name not in _zone_names():
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise CronError(
            "timezone",
            f"unknown time zone {shown!r}: use an IANA name such as Europe/Berlin or UTC",
        )
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _as_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return moment.astimezone(UTC)


def _utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=UTC)
