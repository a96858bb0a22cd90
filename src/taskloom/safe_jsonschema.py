"""JSON Schema validation for schemas Taskloom does not write: an MCP server's tool input
schemas, an `ai` step's `json_schema` (a workflow author's).

`jsonschema` evaluates `pattern`, `patternProperties` (and, through them, `additionalProperties`)
with Python's `re`, which has no time limit: a pattern such as `^(a|aa)+$` against forty `a`s and a
`!` runs for minutes, on the worker's event loop, which every organization's executions share. So
those keywords are evaluated here with the `regex` module under a time budget for the whole
validation; past it, `PatternTooSlow` is raised instead of blocking. `unevaluatedProperties`
(which would reach `re` through patternProperties in jsonschema's own code) is left to the
provider when the schema also uses `patternProperties`: `SchemaTooSlowToCheck` tells the caller.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

BUDGET_SECONDS = 0.5  # all the pattern matching one validation may do
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_deadline")


class PatternTooSlow(Exception):
    """A pattern of the schema took too long against the data: the data is not checked."""

    def __init__(self, pattern: str) -> None:
        super().__init__(f"the schema's pattern {pattern[:80]!r} is too slow to check")
        self.pattern = pattern


def _search(pattern: str, text: str) -> bool:
    remaining = _deadline.get(time.monotonic() + BUDGET_SECONDS) - time.monotonic()
    if remaining <= 0:
        raise PatternTooSlow(pattern)
    try:
        return regex.search(pattern, text, timeout=remaining) is not None
    except TimeoutError:
        raise PatternTooSlow(pattern) from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Any:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for key in instance:
        if key not in properties and not any(_search(p, key) for p in patterns):
            yield key


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Any:
    if not validator.is_type(instance, "object"):
        return
    extras = sorted(_additional(instance, schema), key=str)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        listed = ", ".join(repr(extra) for extra in extras)
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


SafeValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


class SchemaTooSlowToCheck(Exception):
    """The schema combines keywords whose check could reach Python's `re` unbounded."""


def _uses(schema: Any, keyword: str) -> bool:
    if isinstance(schema, Mapping):
        return keyword in schema or any(_uses(v, keyword) for v in schema.values())
    if isinstance(schema, list):
        return any(_uses(v, keyword) for v in schema)
    return False


@contextmanager
def _budget() -> Iterator[None]:
    token = _deadline.set(time.monotonic() + BUDGET_SECONDS)
    try:
        yield
    finally:
        _deadline.reset(token)


def unsupported(schema: Mapping[str, Any]) -> str | None:
    """Why this (valid) schema cannot be checked here, or None."""
    if _uses(schema, "unevaluatedProperties") and _uses(schema, "patternProperties"):
        return "unevaluatedProperties combined with patternProperties is not supported"
    return None


def best_error(schema: Mapping[str, Any], instance: Any) -> ValidationError | None:
    """The most relevant validation error of `instance`, or None (Draft 2020-12; the schema
    assumed valid: check it with `Draft202012Validator.check_schema` first). Raises
    PatternTooSlow past the budget, SchemaTooSlowToCheck when `unsupported` says why."""
    if (reason := unsupported(schema)) is not None:
        raise SchemaTooSlowToCheck(reason)
    with _budget():
        found: ValidationError | None = best_match(SafeValidator(schema).iter_errors(instance))
        return found


def all_errors(
    schema: Mapping[str, Any], instance: Any, *, limit: int = 50
) -> list[ValidationError]:
    """Every validation error of `instance` (at most `limit`, by path), for an answer that
    lists every failing path. Same assumptions and exceptions as `best_error`."""
    if (reason := unsupported(schema)) is not None:
        raise SchemaTooSlowToCheck(reason)
    found: list[ValidationError] = []
    with _budget():
        for error in SafeValidator(schema).iter_errors(instance):
            found.append(error)
            if len(found) >= limit:
                break
    return sorted(found, key=lambda e: [str(p) for p in e.absolute_path])
