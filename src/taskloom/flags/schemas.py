"""Request and response bodies of /api/flags and /api/admin/flags."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from taskloom.errors import ValidationFailed
from taskloom.flags.evaluation import Source
from taskloom.flags.models import FeatureFlagOverride
from taskloom.timestamps import to_utc

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
MAX_KEYS_PER_EVALUATION = 100
_KEY = re.compile(KEY_PATTERN)

FlagKey = Annotated[str, Field(pattern=KEY_PATTERN, max_length=100)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_keys(raw: str | None) -> list[str] | None:
    """`?keys=a,b` as a list without duplicates (None: every flag); ValidationFailed for an
    invalid key or more than MAX_KEYS_PER_EVALUATION."""
    if raw is None:
        return None
    keys = list(dict.fromkeys(part.strip() for part in raw.split(",")))
    if len(keys) > MAX_KEYS_PER_EVALUATION:
        raise ValidationFailed(
            f"query.keys: at most {MAX_KEYS_PER_EVALUATION} keys per request, got {len(keys)}"
        )
    invalid = [k for k in keys if not _KEY.fullmatch(k)]
    if invalid:
        shown = invalid[0][:100]
        raise ValidationFailed(
            f"query.keys: {shown!r} is not a flag key (lowercase letters, digits, '_', '.', '-'; "
            "up to 100 characters, starting with a letter or digit)",
            details={"invalid_keys": [k[:100] for k in invalid[:10]]},
        )
    return keys


# --- evaluation ----------------------------------------------------------------------------------


class FlagState(BaseModel):
    enabled: bool
    source: Source


class Evaluations(BaseModel):
    flags: dict[str, FlagState]


# --- global flags --------------------------------------------------------------------------------


class FlagCreate(StrictModel):
    key: FlagKey
    description: str | None = Field(default=None, max_length=2000)
    default_enabled: bool = False
    rollout_percentage: int | None = Field(default=None, ge=0, le=100)


class FlagUpdate(StrictModel):
    """Fields left out stay as they are; `rollout_percentage: null` turns the rollout off."""

    description: str | None = Field(default=None, max_length=2000)
    default_enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, ge=0, le=100)

    @field_validator("default_enabled")
    @classmethod
    def _not_null(cls, value: bool | None) -> bool | None:
        if value is None:
            raise ValueError("default_enabled cannot be null")
        return value


class FlagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    key: str
    description: str | None
    default_enabled: bool
    rollout_percentage: int | None
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


# --- overrides -----------------------------------------------------------------------------------


class OverrideSet(StrictModel):
    """Replaces any override of the same scope."""

    enabled: bool
    reason: str | None = Field(default=None, max_length=1000)
    # Timezone required; converted to UTC (out-of-range values are a 422, not a 500).
    expires_at: Annotated[AwareDatetime, AfterValidator(to_utc)] | None = None

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return value


class OverrideOut(BaseModel):
    id: uuid.UUID
    flag_key: str
    scope: Literal["org", "user"]
    org_id: uuid.UUID | None  # null: a user override that applies in every organization
    user_id: uuid.UUID | None
    enabled: bool
    reason: str | None
    expires_at: datetime | None
    active: bool  # false once expired (an expired override is ignored, not deleted)
    created_by: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(cls, row: FeatureFlagOverride, flag_key: str) -> OverrideOut:
        expires_at = row.expires_at
        return cls(
            id=row.id,
            flag_key=flag_key,
            scope="org" if row.user_id is None else "user",
            org_id=row.org_id,
            user_id=row.user_id,
            enabled=row.enabled,
            reason=row.reason,
            expires_at=expires_at,
            active=expires_at is None or expires_at > datetime.now(UTC),
            created_by=row.created_by,
            created_at=row.created_at,
        )
