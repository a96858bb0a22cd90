"""Step arguments are Jinja2 templates, rendered in a sandbox with `input` (the execution's
input) and `steps.<id>.output` (earlier steps' outputs) in scope.

A string that is exactly one expression, `"{{ steps.fetch.output.body }}"`, yields the value
itself (an object, a list, a number), as n8n expressions do; any other string renders to text.
Undefined names are errors, not empty strings, so a typo fails the step instead of sending "".
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

MAX_RENDERED_CHARS = 1_000_000
MAX_POWER_EXPONENT = 1_000


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox blocks unsafe attributes; this also bounds `*` and `**`, which would let
    a template such as `{{ 'a' * 10**12 }}` exhaust a worker's memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
                raise ValueError(f"exponent larger than {MAX_POWER_EXPONENT}")
            return left**right
        sized, count = (left, right) if isinstance(left, str | list | tuple) else (right, left)
        too_long = (
            isinstance(sized, str | list | tuple)
            and isinstance(count, int)
            and len(sized) * count > MAX_RENDERED_CHARS
        )
        if too_long:
            raise ValueError(f"result longer than {MAX_RENDERED_CHARS}")
        return left * right


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)
_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)


class TemplateProblem(ValueError):
    """A template that does not parse or does not render; `path` names where it sits."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def check_syntax(value: Any, path: str) -> None:
    """Raise TemplateProblem for the first template in `value` that does not parse."""
    for where, text in _strings(value, path):
        try:
            match = _ONE_EXPRESSION.match(text)
            if match:
                _ENV.compile_expression(match["expr"])
            else:
                _ENV.parse(text)
        except TemplateError as exc:
            raise TemplateProblem(where, f"template error: {exc.message or exc}") from exc


def render(value: Any, scope: dict[str, Any], path: str = "args") -> Any:
    """Render every string in `value` (recursively through objects and lists)."""
    if isinstance(value, str):
        return _render_string(value, scope, path)
    if isinstance(value, dict):
        return {key: render(item, scope, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, scope, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


@lru_cache(maxsize=2048)
def _compiled(text: str) -> tuple[bool, Any]:
    """(is one expression, compiled template or expression): compiled once per distinct text,
    not once per execution (the cost showed in the worker's profile)."""
    match = _ONE_EXPRESSION.match(text)
    if match:
        return True, _ENV.compile_expression(match["expr"], undefined_to_none=False)
    return False, _ENV.from_string(text)


def _render_string(text: str, scope: dict[str, Any], path: str) -> Any:
    if "{" not in text:
        return text
    try:
        expression, compiled = _compiled(text)
        if expression:
            return _as_json_value(compiled(**scope), path)
        rendered = compiled.render(**scope)
    except TemplateError as exc:
        raise TemplateProblem(path, f"template error: {exc.message or exc}") from exc
    except TemplateProblem:
        raise
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateProblem(path, f"template error: {exc}") from exc
    if len(rendered) > MAX_RENDERED_CHARS:
        raise TemplateProblem(path, f"renders to more than {MAX_RENDERED_CHARS} characters")
    return rendered


def _as_json_value(value: Any, path: str) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError naming the missing name
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TemplateProblem(path, f"yields a {type(value).__name__}, not JSON") from exc
    if len(encoded) > MAX_RENDERED_CHARS:
        raise TemplateProblem(path, f"renders to more than {MAX_RENDERED_CHARS} characters")
    return value


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in _strings(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [s for i, item in enumerate(value) for s in _strings(item, f"{path}[{i}]")]
    return []
