"""Cron schedules in a time zone: what they accept and refuse, and their ticks as UTC instants
across daylight-saving changes. Every expected instant was worked out by hand (local time and
offset in the comments) and is written as a literal."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskloom.triggers.cron import CronError, CronSchedule


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks_between(schedule: CronSchedule, start: datetime, end: datetime) -> list[datetime]:
    """Every tick t with start <= t < end, by following next_after."""
    ticks = []
    tick = schedule.next_after(start - timedelta(microseconds=1))
    while tick < end:
        ticks.append(tick)
        tick = schedule.next_after(tick)
    return ticks


# Parsing


def test_five_fields_are_minute_hour_day_of_month_month_day_of_week() -> None:
    schedule = CronSchedule.parse("15 9 1 * *", "UTC")
    assert schedule.next_runs(utc(2027, 1, 1), count=3) == [
        utc(2027, 1, 1, 9, 15),
        utc(2027, 2, 1, 9, 15),
        utc(2027, 3, 1, 9, 15),
    ]


def test_six_fields_put_the_seconds_first() -> None:
    every_ten_seconds = CronSchedule.parse("*/10 * * * * *", "UTC")
    assert every_ten_seconds.next_runs(utc(2027, 5, 1, 12, 0, 0), count=3) == [
        utc(2027, 5, 1, 12, 0, 10),
        utc(2027, 5, 1, 12, 0, 20),
        utc(2027, 5, 1, 12, 0, 30),
    ]
    assert every_ten_seconds.next_after(utc(2027, 5, 1, 11, 59, 55)) == utc(2027, 5, 1, 12, 0, 0)

    second_thirty = CronSchedule.parse("30 * * * * *", "UTC")
    assert second_thirty.next_runs(utc(2027, 5, 1, 12, 0, 0), count=3) == [
        utc(2027, 5, 1, 12, 0, 30),
        utc(2027, 5, 1, 12, 1, 30),
        utc(2027, 5, 1, 12, 2, 30),
    ]


def test_six_fields_with_every_field_set() -> None:
    # Second 5 of minute 0 of 08:00 on Mondays (2027-05-03 and 2027-05-10 are Mondays).
    schedule = CronSchedule.parse("5 0 8 * * MON", "UTC")
    assert schedule.next_runs(utc(2027, 5, 1), count=2) == [
        utc(2027, 5, 3, 8, 0, 5),
        utc(2027, 5, 10, 8, 0, 5),
    ]


def test_month_and_weekday_names() -> None:
    # Mondays of January and February 2028: the 3rd, 10th, ... (2028-01-03 is a Monday).
    schedule = CronSchedule.parse("0 12 * JAN-FEB MON", "UTC")
    assert schedule.next_runs(utc(2027, 6, 1), count=2) == [
        utc(2028, 1, 3, 12, 0),
        utc(2028, 1, 10, 12, 0),
    ]


def test_last_day_and_nth_weekday_of_the_month() -> None:
    assert CronSchedule.parse("0 0 L * *", "UTC").next_runs(utc(2028, 1, 31, 1), count=2) == [
        utc(2028, 2, 29),  # a leap year
        utc(2028, 3, 31),
    ]
    # The second Monday of May 2027 is the 10th, of June the 14th.
    assert CronSchedule.parse("0 0 * * MON#2", "UTC").next_runs(utc(2027, 5, 1), count=2) == [
        utc(2027, 5, 10),
        utc(2027, 6, 14),
    ]


def test_both_day_fields_restricted_match_either_one() -> None:
    # The 1st of the month or a Friday: 2027-05-01 (Saturday, the 1st), then Fridays 7, 14.
    schedule = CronSchedule.parse("0 0 1 * FRI", "UTC")
    assert schedule.next_runs(utc(2027, 4, 30, 1), count=3) == [
        utc(2027, 5, 1),
        utc(2027, 5, 7),
        utc(2027, 5, 14),
    ]


@pytest.mark.parametrize(
    ("alias", "same_as"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_aliases_mean_their_five_fields(alias: str, same_as: str) -> None:
    start = utc(2027, 2, 10, 13, 45)
    schedule = CronSchedule.parse(alias, "Europe/Berlin")
    assert schedule.expression == alias
    assert schedule.next_runs(start, count=3) == CronSchedule.parse(
        same_as, "Europe/Berlin"
    ).next_runs(start, count=3)


def test_aliases_by_example() -> None:
    start = utc(2027, 5, 5, 10, 30)  # a Wednesday
    assert CronSchedule.parse("@hourly", "UTC").next_after(start) == utc(2027, 5, 5, 11)
    assert CronSchedule.parse("@DAILY", "UTC").next_after(start) == utc(2027, 5, 6)
    assert CronSchedule.parse("@weekly", "UTC").next_after(start) == utc(2027, 5, 9)  # Sunday
    assert CronSchedule.parse("@monthly", "UTC").next_after(start) == utc(2027, 6, 1)
    assert CronSchedule.parse("@yearly", "UTC").next_after(start) == utc(2028, 1, 1)


def test_parse_keeps_the_expression_with_whitespace_normalised_and_the_zone_as_given() -> None:
    schedule = CronSchedule.parse("  */5\t*  * * MON ", "America/New_York")
    assert schedule.expression == "*/5 * * * MON"
    assert schedule.timezone == "America/New_York"
    assert schedule == CronSchedule.parse("*/5 * * * MON", "America/New_York")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("@reboot", "@reboot is not supported"),
        ("@every_minute", "unknown alias"),
        ("* * * *", "got 4 fields"),
        ("0 0 1 1 * 2027", "the day-of-week field '2027'"),
        ("0 0 0 1 1 * 2027", "year field"),
        ("61 * * * *", "the minute field '61'"),
        ("0 24 * * *", "the hour field '24'"),
        ("0 0 32 * *", "the day-of-month field '32'"),
        ("0 0 0 * *", "the day-of-month field '0'"),
        ("0 0 * 13 *", "the month field '13'"),
        ("0 0 * FOO *", "the month field 'FOO'"),
        ("0 0 * * 8", "the day-of-week field '8'"),
        ("0 0 * * MON#6", "the day-of-week field 'MON#6'"),
        ("*/0 * * * *", "the minute field '*/0'"),
        ("60 * * * * *", "the second field '60'"),
        ("L * * * *", "the minute field 'L'"),
        ("H * * * *", "hashed and random"),
        ("R * * * *", "hashed and random"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 " + "1," * 100 + "1 * *", "longer than 200 characters"),
    ],
)
def test_refused_expressions_name_the_problem(expression: str, message: str) -> None:
    with pytest.raises(CronError) as refused:
        CronSchedule.parse(expression, "UTC")
    assert refused.value.field == "cron"
    assert message in str(refused.value)


def test_a_schedule_that_fires_rarely_is_not_taken_for_one_that_never_fires() -> None:
    # A fifth Monday in February needs a leap year starting February on a Monday: 2044.
    schedule = CronSchedule.parse("0 0 * 2 MON#5", "UTC")
    assert schedule.next_after(utc(2027, 1, 1)) == utc(2044, 2, 29)
    assert CronSchedule.parse("0 0 29 2 *", "UTC").next_after(utc(2097, 1, 1)) == utc(2104, 2, 29)


@pytest.mark.parametrize(
    "zone",
    [
        "",
        "Mars/Olympus_Mons",
        "europe/berlin",
        "Europe/Berlin ",
        "Europe",
        "../../etc/passwd",
        "/etc/localtime",
        "/usr/share/zoneinfo/Europe/Berlin",
        "Europe/../Europe/Berlin",
        "localtime",
    ],
)
def test_refused_time_zones(zone: str) -> None:
    with pytest.raises(CronError) as refused:
        CronSchedule.parse("0 0 * * *", zone)
    assert refused.value.field == "timezone"
    assert "time zone" in str(refused.value)


def test_utc_and_iana_names_are_time_zones() -> None:
    assert CronSchedule.parse("0 0 * * *", "UTC").next_after(utc(2027, 1, 1)) == utc(2027, 1, 2)
    # Midnight in Tokyo (+09:00, no DST) is 15:00Z the day before.
    tokyo = CronSchedule.parse("0 0 * * *", "Asia/Tokyo")
    assert tokyo.next_after(utc(2027, 1, 1)) == utc(2027, 1, 1, 15)


def test_instants_must_be_timezone_aware() -> None:
    schedule = CronSchedule.parse("0 0 * * *", "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2027, 1, 1))


# Ticks


def test_next_after_is_strictly_after_and_in_utc() -> None:
    schedule = CronSchedule.parse("0 * * * *", "Europe/Berlin")
    assert schedule.next_after(utc(2027, 1, 1, 10)) == utc(2027, 1, 1, 11)
    assert schedule.next_after(utc(2027, 1, 1, 9, 59, 59, 999999)) == utc(2027, 1, 1, 10)
    tick = schedule.next_after(datetime(2027, 1, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))))
    assert tick == utc(2027, 1, 1, 11)
    assert tick.tzinfo is UTC


def test_next_runs_gives_count_increasing_ticks() -> None:
    schedule = CronSchedule.parse("*/10 * * * * *", "Europe/Berlin")
    assert schedule.next_runs(utc(2027, 5, 1, 12, 0, 5), count=5) == [
        utc(2027, 5, 1, 12, 0, 10),
        utc(2027, 5, 1, 12, 0, 20),
        utc(2027, 5, 1, 12, 0, 30),
        utc(2027, 5, 1, 12, 0, 40),
        utc(2027, 5, 1, 12, 0, 50),
    ]
    assert len(schedule.next_runs(utc(2027, 5, 1))) == 5


def test_previous_before_is_newest_first_and_respects_limit_and_not_before() -> None:
    schedule = CronSchedule.parse("0 * * * *", "UTC")
    before, not_before = utc(2027, 1, 1, 5), utc(2027, 1, 1, 2)
    assert schedule.previous_before(before, limit=2, not_before=not_before) == [
        utc(2027, 1, 1, 4),
        utc(2027, 1, 1, 3),
    ]
    # not_before is inclusive, before is not.
    assert schedule.previous_before(before, limit=10, not_before=not_before) == [
        utc(2027, 1, 1, 4),
        utc(2027, 1, 1, 3),
        utc(2027, 1, 1, 2),
    ]
    assert schedule.previous_before(before, limit=0, not_before=not_before) == []
    assert schedule.previous_before(before, limit=10, not_before=before) == []


def test_previous_before_a_second_schedule_walks_back_only_limit_ticks() -> None:
    schedule = CronSchedule.parse("* * * * * *", "Europe/Berlin")
    started = time.perf_counter()
    ticks = schedule.previous_before(utc(2027, 6, 1, 12), limit=100, not_before=utc(2000, 1, 1))
    elapsed = time.perf_counter() - started
    assert ticks[0] == utc(2027, 6, 1, 11, 59, 59)
    assert ticks[-1] == utc(2027, 6, 1, 11, 58, 20)
    assert len(ticks) == 100
    assert elapsed < 1  # walking 27 years of seconds would take hours


# Daylight saving: Europe/Berlin changes on 2027-03-28 at 01:00Z (CET +1 -> CEST +2) and on
# 2027-10-31 at 01:00Z (CEST +2 -> CET +1).


def test_berlin_daily_0230_skipped_in_spring_runs_once_at_the_end_of_the_gap() -> None:
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert schedule.next_runs(utc(2027, 3, 26, 12), count=3) == [
        utc(2027, 3, 27, 1, 30),  # 02:30 CET
        utc(2027, 3, 28, 1, 0),  # 02:30 does not exist: 03:00 CEST, the end of the gap
        utc(2027, 3, 29, 0, 30),  # 02:30 CEST
    ]


def test_berlin_daily_0230_repeated_in_autumn_runs_once_at_its_first_occurrence() -> None:
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert schedule.next_runs(utc(2027, 10, 30, 12), count=2) == [
        utc(2027, 10, 31, 0, 30),  # 02:30 CEST; not again at 02:30 CET (01:30Z)
        utc(2027, 11, 1, 1, 30),  # 02:30 CET
    ]


def test_the_tick_after_0230_cest_on_the_autumn_change_is_0230_cet_the_next_day() -> None:
    # The issue: the default croniter/BullMQ strategy lands on 2027-11-01 03:30 instead.
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert schedule.next_after(utc(2027, 10, 31, 0, 30)) == utc(2027, 11, 1, 1, 30)
    # Also from inside the repeated hour, in its second pass (02:10 CET).
    assert schedule.next_after(utc(2027, 10, 31, 1, 10)) == utc(2027, 11, 1, 1, 30)


def test_berlin_half_hourly_in_spring_collapses_the_skipped_times_into_one_run() -> None:
    schedule = CronSchedule.parse("0,30 * * * *", "Europe/Berlin")
    assert ticks_between(schedule, utc(2027, 3, 28, 0, 0), utc(2027, 3, 28, 2, 1)) == [
        utc(2027, 3, 28, 0, 0),  # 01:00 CET
        utc(2027, 3, 28, 0, 30),  # 01:30 CET
        utc(2027, 3, 28, 1, 0),  # 02:00 and 02:30 (skipped) and 03:00 CEST: one run
        utc(2027, 3, 28, 1, 30),  # 03:30 CEST
        utc(2027, 3, 28, 2, 0),  # 04:00 CEST
    ]


def test_berlin_quarter_hourly_in_spring_misses_no_real_time_tick() -> None:
    schedule = CronSchedule.parse("*/15 * * * *", "Europe/Berlin")
    assert ticks_between(schedule, utc(2027, 3, 28, 0, 30), utc(2027, 3, 28, 1, 31)) == [
        utc(2027, 3, 28, 0, 30),  # 01:30 CET
        utc(2027, 3, 28, 0, 45),  # 01:45 CET
        utc(2027, 3, 28, 1, 0),  # 02:00-02:45 (skipped) and 03:00 CEST: one run
        utc(2027, 3, 28, 1, 15),  # 03:15 CEST
        utc(2027, 3, 28, 1, 30),  # 03:30 CEST
    ]


def test_berlin_every_ten_minutes_keeps_running_through_the_repeated_hour() -> None:
    schedule = CronSchedule.parse("*/10 * * * *", "Europe/Berlin")
    ticks = ticks_between(schedule, utc(2027, 10, 31, 0, 0), utc(2027, 10, 31, 2, 1))
    # 02:00-02:50 CEST (00:00Z-00:50Z), 02:00-02:50 CET (01:00Z-01:50Z), then 03:00 CET.
    assert ticks == [utc(2027, 10, 31, 0, 0) + timedelta(minutes=10 * i) for i in range(13)]
    assert ticks[-1] == utc(2027, 10, 31, 2, 0)


def test_berlin_half_and_quarter_hourly_across_the_autumn_change() -> None:
    half = CronSchedule.parse("0,30 * * * *", "Europe/Berlin")
    assert ticks_between(half, utc(2027, 10, 30, 23, 30), utc(2027, 10, 31, 2, 1)) == [
        utc(2027, 10, 30, 23, 30),  # 01:30 CEST
        utc(2027, 10, 31, 0, 0),  # 02:00 CEST
        utc(2027, 10, 31, 0, 30),  # 02:30 CEST
        utc(2027, 10, 31, 1, 0),  # 02:00 CET
        utc(2027, 10, 31, 1, 30),  # 02:30 CET
        utc(2027, 10, 31, 2, 0),  # 03:00 CET
    ]
    quarter = CronSchedule.parse("*/15 * * * *", "Europe/Berlin")
    ticks = ticks_between(quarter, utc(2027, 10, 30, 23, 45), utc(2027, 10, 31, 2, 16))
    assert ticks == [utc(2027, 10, 30, 23, 45) + timedelta(minutes=15 * i) for i in range(11)]


def test_a_next_after_from_the_first_pass_of_the_repeated_hour_goes_to_the_second() -> None:
    schedule = CronSchedule.parse("*/10 * * * *", "Europe/Berlin")
    # 02:55 CEST: the next ten-minute mark is 02:00 CET, not 03:00 CET.
    assert schedule.next_after(utc(2027, 10, 31, 0, 55)) == utc(2027, 10, 31, 1, 0)


def test_hours_other_than_every_hour_are_fixed_times_and_run_once_in_autumn() -> None:
    fixed = CronSchedule.parse("0,30 2 * * *", "Europe/Berlin")
    assert fixed.next_runs(utc(2027, 10, 30, 23), count=3) == [
        utc(2027, 10, 31, 0, 0),  # 02:00 CEST
        utc(2027, 10, 31, 0, 30),  # 02:30 CEST; not again in CET
        utc(2027, 11, 1, 1, 0),  # 02:00 CET the next day
    ]
    every_two_hours = CronSchedule.parse("0 */2 * * *", "Europe/Berlin")
    assert every_two_hours.next_runs(utc(2027, 10, 30, 21, 30), count=3) == [
        utc(2027, 10, 30, 22, 0),  # 00:00 CEST
        utc(2027, 10, 31, 0, 0),  # 02:00 CEST, once
        utc(2027, 10, 31, 3, 0),  # 04:00 CET
    ]


def test_a_second_schedule_through_both_changes() -> None:
    schedule = CronSchedule.parse("*/20 * * * * *", "Europe/Berlin")
    # Spring: 01:59:40 CET, then 03:00:00 CEST (the whole skipped hour in one run).
    assert ticks_between(schedule, utc(2027, 3, 28, 0, 59, 40), utc(2027, 3, 28, 1, 0, 21)) == [
        utc(2027, 3, 28, 0, 59, 40),
        utc(2027, 3, 28, 1, 0, 0),
        utc(2027, 3, 28, 1, 0, 20),
    ]
    # Autumn: real time goes on from 02:59:40 CEST to 02:00:00 CET.
    assert ticks_between(schedule, utc(2027, 10, 31, 0, 59, 40), utc(2027, 10, 31, 1, 0, 21)) == [
        utc(2027, 10, 31, 0, 59, 40),
        utc(2027, 10, 31, 1, 0, 0),
        utc(2027, 10, 31, 1, 0, 20),
    ]


@pytest.mark.parametrize(
    "expression", ["30 2 * * *", "0,30 * * * *", "*/10 * * * *", "0,30 1-3 * * *", "*/20 * 2 * * *"]
)
@pytest.mark.parametrize(
    ("start", "end"),
    [
        (utc(2027, 3, 27, 22), utc(2027, 3, 28, 4)),
        (utc(2027, 10, 30, 22), utc(2027, 10, 31, 4)),
    ],
)
def test_previous_before_walks_back_over_the_ticks_next_after_walks_forward(
    expression: str, start: datetime, end: datetime
) -> None:
    schedule = CronSchedule.parse(expression, "Europe/Berlin")
    forward = ticks_between(schedule, start, end)
    assert forward == sorted(set(forward))  # strictly increasing, no instant twice
    assert schedule.previous_before(end, limit=10_000, not_before=start) == forward[::-1]


# Other zones


def test_new_york_daily_0230_across_both_changes() -> None:
    # New York changes on 2027-03-14 at 07:00Z (EST -5 -> EDT -4) and on 2027-11-07 at 06:00Z.
    schedule = CronSchedule.parse("30 2 * * *", "America/New_York")
    assert schedule.next_runs(utc(2027, 3, 13), count=3) == [
        utc(2027, 3, 13, 7, 30),  # 02:30 EST
        utc(2027, 3, 14, 7, 0),  # 02:30 does not exist: 03:00 EDT
        utc(2027, 3, 15, 6, 30),  # 02:30 EDT
    ]
    assert schedule.next_runs(utc(2027, 11, 6), count=3) == [
        utc(2027, 11, 6, 6, 30),  # 02:30 EDT
        utc(2027, 11, 7, 7, 30),  # 02:30 EST (01:00-01:59 repeats, not 02:xx)
        utc(2027, 11, 8, 7, 30),  # 02:30 EST
    ]


def test_new_york_daily_0130_on_the_autumn_change_runs_once() -> None:
    schedule = CronSchedule.parse("30 1 * * *", "America/New_York")
    assert schedule.next_runs(utc(2027, 11, 6), count=3) == [
        utc(2027, 11, 6, 5, 30),  # 01:30 EDT
        utc(2027, 11, 7, 5, 30),  # 01:30 EDT, first occurrence; not at 01:30 EST (06:30Z)
        utc(2027, 11, 8, 6, 30),  # 01:30 EST
    ]


def test_sydney_daily_0230_in_the_southern_autumn_and_spring() -> None:
    # Sydney goes back on 2027-04-04 at 03:00 AEDT (16:00Z on the 3rd, +11 -> +10) and forward
    # on 2027-10-03 at 02:00 AEST (16:00Z on the 2nd, +10 -> +11).
    schedule = CronSchedule.parse("30 2 * * *", "Australia/Sydney")
    assert schedule.next_runs(utc(2027, 4, 2, 12), count=3) == [
        utc(2027, 4, 2, 15, 30),  # 2027-04-03 02:30 AEDT
        utc(2027, 4, 3, 15, 30),  # 2027-04-04 02:30 AEDT, first occurrence
        utc(2027, 4, 4, 16, 30),  # 2027-04-05 02:30 AEST
    ]
    assert schedule.next_runs(utc(2027, 10, 1, 12), count=3) == [
        utc(2027, 10, 1, 16, 30),  # 2027-10-02 02:30 AEST
        utc(2027, 10, 2, 16, 0),  # 2027-10-03 02:30 does not exist: 03:00 AEDT
        utc(2027, 10, 3, 15, 30),  # 2027-10-04 02:30 AEDT
    ]
