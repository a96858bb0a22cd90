"""Keyset cursors for lists ordered newest first, by (created_at, id) or by a number of their
own (a workflow's versions): opaque to clients, stable while rows are added, and cheap for the
database at any depth (unlike OFFSET)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from taskloom.errors import BadRequest


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) of the last row of the previous page, or a 400 `invalid_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), uuid.UUID(ident)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor", code="invalid_cursor") from exc


def encode_position(position: int) -> str:
    """A cursor for lists ordered by a number of their own, newest (highest) first."""
    return base64.urlsafe_b64encode(f"n|{position}".encode()).decode().rstrip("=")


def decode_position(cursor: str) -> int:
    """The number of the last row of the previous page, or a 400 `invalid_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, number = raw.partition("|")
        if kind != "n" or not number.isascii() or not number.isdigit() or len(number) > 9:
            raise ValueError(cursor)  # 9 digits: within a PostgreSQL integer
        return int(number)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor", code="invalid_cursor") from exc
