"""Durations as people write them in definitions: "500ms", "30s", "5m", "24h", "7d", and
combinations from the largest unit down such as "1h30m" or "2d12h".

Definitions store the text as written; the engine parses it when it needs a timedelta."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MAX_DURATION = timedelta(days=366)  # longer is a mistake: a yearly job is a schedule, not a wait
_MAX_TEXT = 32
_MAX_MS = MAX_DURATION // timedelta(milliseconds=1)
_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}  # milliseconds
_PART = re.compile(r"([0-9]{1,9})(ms|d|h|m|s)")
_ORDER = tuple(_UNITS)
_EXAMPLE = 'a duration such as "500ms", "30s", "5m", "24h", "7d" or "1h30m"'


class DurationError(ValueError):
    """Text that is not a usable duration; the message says why, for a person."""


def parse_duration(text: str) -> timedelta:
    """The timedelta `text` names, or DurationError (garbage, zero, over MAX_DURATION)."""
    if not isinstance(text, str) or not text or len(text) > _MAX_TEXT:
        raise DurationError(f"expected {_EXAMPLE}")
    total = 0  # milliseconds, an int: no overflow however many digits
    position = 0
    last_unit = -1
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        unit = _ORDER.index(match[2])
        if unit <= last_unit:
            raise DurationError(f"{text!r}: give each unit once, largest first ({_EXAMPLE})")
        last_unit = unit
        total += int(match[1]) * _UNITS[match[2]]
        position = match.end()
        if total > _MAX_MS:
            raise DurationError(f"{text!r} is longer than {MAX_DURATION.days} days")
    if position != len(text):
        raise DurationError(f"{text!r} is not {_EXAMPLE}")
    if total == 0:
        raise DurationError(f"{text!r} is zero; a duration must be positive")
    return timedelta(milliseconds=total)


def _checked(text: str) -> str:
    try:
        parse_duration(text)
    except DurationError as exc:  # a custom error: the message without "Value error, "
        raise PydanticCustomError("duration", "{reason}", {"reason": str(exc)}) from exc
    return text


Duration = Annotated[str, AfterValidator(_checked)]
"""A definition field holding a duration: validated, stored as written."""
