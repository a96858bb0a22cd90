"""Durations as definitions write them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskloom.workflows.durations import MAX_DURATION, DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d12h5m1s250ms", timedelta(days=2, hours=12, minutes=5, seconds=1, milliseconds=250)),
        ("90s", timedelta(seconds=90)),
        ("0h1s", timedelta(seconds=1)),
        ("366d", MAX_DURATION),
    ],
)
def test_a_duration_parses_to_its_timedelta(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected a duration"),
        ("0s", "is zero"),
        ("0h0m", "is zero"),
        ("-5s", "is not a duration"),
        ("5", "is not a duration"),
        ("s", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("5 m", "is not a duration"),
        ("5M", "is not a duration"),
        ("1h30", "is not a duration"),
        ("\u0665s", "is not a duration"),  # an Arabic-Indic five: digits are ASCII only
        ("30m1h", "largest first"),
        ("1m1m", "largest first"),
        ("367d", "longer than 366 days"),
        ("366d1ms", "longer than 366 days"),
        ("999999999d999999999d", "longer than 366 days"),
        ("9999999999s", "is not a duration"),  # more than nine digits
        ("1s" * 20, "expected a duration"),  # too long to be a real duration
    ],
)
def test_a_bad_duration_is_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(DurationError, match=says):
        parse_duration(text)
