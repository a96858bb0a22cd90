"""Reading posted forms and turning refusals into messages next to the fields they concern."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from taskloom.errors import DomainError
from taskloom.input_guard import BadInput, check_decoded
from taskloom.timestamps import to_utc


@dataclass(frozen=True)
class FieldError:
    field: str  # a dotted path such as "definition.steps.0.args.url"; "" for the whole form
    message: str

    @property
    def label(self) -> str:
        return self.field or "form"


class FormProblem(Exception):
    """The form cannot even be read (e.g. JSON that does not parse)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(f"{e.label}: {e.message}" for e in errors))
        self.errors = list(errors)


def _path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query"):
        parts = parts[1:]
    return ".".join(parts)


def from_validation(error: ValidationError) -> list[FieldError]:
    return [
        FieldError(_path(e.get("loc", ())), e.get("msg", "invalid value")) for e in error.errors()
    ]


def from_domain(error: DomainError) -> list[FieldError]:
    """The per-field problems a service named in its error's details, else its message."""
    listed = (error.details or {}).get("errors") if isinstance(error.details, dict) else None
    if isinstance(listed, list) and listed:
        found = [
            FieldError(_path(e.get("loc", ())), str(e.get("message", error.message)))
            for e in listed
            if isinstance(e, dict)
        ]
        if found:
            return found
    return [FieldError("", error.message)]


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def optional_text(form: FormData, name: str) -> str | None:
    return text(form, name).strip() or None


def json_field(form: FormData, name: str, *, default: Any = None) -> Any:
    """The field parsed as JSON (blank: `default`), or FormProblem naming the line and column,
    or the value PostgreSQL could not store (NaN, an escaped NUL: input_guard's rules)."""
    raw = text(form, name)
    if not raw.strip():
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as bad:
        raise FormProblem(
            [FieldError(name, f"not valid JSON: {bad.msg} (line {bad.lineno}, column {bad.colno})")]
        ) from None
    except RecursionError:
        raise FormProblem([FieldError(name, "not valid JSON: nested too deeply")]) from None
    try:
        check_decoded(value, name)
    except BadInput as bad:
        raise FormProblem([FieldError(bad.where, bad.problem)]) from None
    return value


def utc_datetime(value: str | None, name: str) -> datetime | None:
    """An <input type="datetime-local"> value (no zone: read as UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FormProblem([FieldError(name, "not a date and time")]) from None
    try:
        return to_utc(parsed)
    except ValueError as out_of_range:
        raise FormProblem([FieldError(name, str(out_of_range))]) from None


def errors_for(errors: Sequence[FieldError], prefix: str) -> list[FieldError]:
    """The errors of one field (and everything under it)."""
    return [e for e in errors if e.field == prefix or e.field.startswith(prefix + ".")]
