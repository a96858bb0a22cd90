"""One input type for points in time: timezone-aware or naive (taken as UTC), converted to UTC
at validation, and refused with a 422 when the UTC value falls outside what PostgreSQL and
Python can hold (e.g. `9999-12-31T23:59:59-14:00` is already year 10000 in UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("this point in time is outside the years 1 to 9999 in UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(to_utc)]
