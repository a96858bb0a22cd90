"""The run form a workflow's `input_schema` describes, and the posted form read back as typed
JSON input.

One field per top-level property of an object schema: a string is a text input (`format` email,
uri or date: the matching input type), an `enum` of strings or numbers a select, an integer or
number a number input (with `minimum` / `maximum`), a boolean a checkbox, and anything else
(arrays, objects, unions, `$ref`s) a JSON textarea for that property. A schema that is not an
object with properties gets no form: the page keeps its raw JSON textarea.

Reading the form only converts and enforces `required`; everything else the schema says is
checked once, by `executions.service.check_input`, whose errors name the same fields
(`input.<property>`). Each field's form name is that path too, so an error lands under its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.datastructures import FormData

from taskloom.web.forms import FieldError, FormProblem, json_field, text

PREFIX = "input."


class Kind(StrEnum):
    TEXT = "text"
    EMAIL = "email"
    URL = "url"
    DATE = "date"
    SELECT = "select"
    INTEGER = "integer"
    NUMBER = "number"
    CHECKBOX = "checkbox"
    JSON = "json"


_STRING_FORMATS = {"email": Kind.EMAIL, "uri": Kind.URL, "date": Kind.DATE}


@dataclass(frozen=True)
class Field:
    """One property of the schema as a form control."""

    key: str  # the property's name in the input object
    kind: Kind
    label: str
    description: str | None
    required: bool
    default: Any = None
    has_default: bool = False
    # A select's options: the posted value (and shown text) → the JSON value it stands for.
    options: dict[str, Any] = field(default_factory=dict)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def name(self) -> str:
        """The form name, which is also the path the schema's errors name."""
        return PREFIX + self.key

    @property
    def step(self) -> str:
        return "1" if self.kind is Kind.INTEGER else "any"


def _single_type(schema: Mapping[str, Any]) -> str | None:
    """The property's one type; `["string", "null"]` counts as string (blank is omitted)."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list):
        named = [t for t in declared if t != "null"]
        if len(named) == 1 and isinstance(named[0], str):
            return named[0]
    return None


def _options(values: Any) -> dict[str, Any] | None:
    """An enum as select options, when every value is a string or a number with a distinct
    text (True would read as 1 and null as nothing: those stay JSON)."""
    if not isinstance(values, list) or not values:
        return None
    options: dict[str, Any] = {}
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        shown = value if isinstance(value, str) else json.dumps(value)
        if shown in options:
            return None
        options[shown] = value
    return options


def _bound(schema: Mapping[str, Any], key: str) -> float | None:
    value = schema.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _kind(schema: Mapping[str, Any]) -> Kind:
    declared = _single_type(schema)
    if "$ref" in schema or any(k in schema for k in ("oneOf", "anyOf", "allOf", "const")):
        return Kind.JSON
    if "enum" in schema:
        return Kind.SELECT if _options(schema["enum"]) is not None else Kind.JSON
    if declared == "string":
        return _STRING_FORMATS.get(str(schema.get("format")), Kind.TEXT)
    if declared == "integer":
        return Kind.INTEGER
    if declared == "number":
        return Kind.NUMBER
    if declared == "boolean":
        return Kind.CHECKBOX
    return Kind.JSON


def _field(name: str, schema: Any, required: bool) -> Field:
    if not isinstance(schema, Mapping):  # `true` / `false` as a property's schema
        schema = {}
    kind = _kind(schema)
    title = schema.get("title")
    description = schema.get("description")
    return Field(
        key=name,
        kind=kind,
        label=title if isinstance(title, str) and title.strip() else name,
        description=description if isinstance(description, str) and description else None,
        required=required,
        default=schema.get("default"),
        has_default="default" in schema,
        options=(_options(schema.get("enum")) or {}) if kind is Kind.SELECT else {},
        minimum=_bound(schema, "minimum"),
        maximum=_bound(schema, "maximum"),
    )


def fields_of(schema: Any) -> list[Field] | None:
    """The form for an input schema, in the order its properties are written; None when the
    schema is absent or does not describe an object by its properties."""
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return None
    if schema.get("type", "object") != "object":
        return None
    listed = schema.get("required")
    required = {r for r in listed if isinstance(r, str)} if isinstance(listed, list) else set()
    return [_field(str(name), sub, name in required) for name, sub in properties.items()]


# --- what the form shows -------------------------------------------------------------------------


def _shown(f: Field, value: Any) -> str:
    """A JSON value as the text its control holds."""
    if value is None:
        return ""
    if f.kind is Kind.JSON:
        return json.dumps(value, indent=2, ensure_ascii=False)
    if f.kind is Kind.SELECT:
        return next((shown for shown, v in f.options.items() if v == value), "")
    if isinstance(value, str):
        return value
    return json.dumps(value)


def initial_values(fields: list[Field]) -> dict[str, str]:
    """Each control's starting text (a checkbox: "on" when checked): the schema's defaults."""
    values: dict[str, str] = {}
    for f in fields:
        if f.kind is Kind.CHECKBOX:
            values[f.name] = "on" if f.default is True else ""
        else:
            values[f.name] = _shown(f, f.default) if f.has_default else ""
    return values


def posted_values(fields: list[Field], form: FormData) -> dict[str, str]:
    """What was posted, to show the form again as the person left it."""
    return {f.name: text(form, f.name) for f in fields}


# --- reading the posted form ---------------------------------------------------------------------


def _number(f: Field, raw: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if value.is_integer():
        return int(value)
    if f.kind is Kind.INTEGER:
        raise ValueError("not a whole number")
    return value


def _value(f: Field, form: FormData) -> Any:
    """The property's JSON value, or None when left blank (raises FormProblem or ValueError)."""
    if f.kind is Kind.CHECKBOX:
        return text(form, f.name) != ""  # unchecked posts nothing: false
    if f.kind is Kind.JSON:
        return json_field(form, f.name)
    raw = text(form, f.name)
    if f.kind in (Kind.INTEGER, Kind.NUMBER):
        return _number(f, raw.strip()) if raw.strip() else None
    if f.kind is Kind.SELECT:
        if raw == "":
            return None
        if raw not in f.options:
            raise ValueError("choose one of the listed values")
        return f.options[raw]
    return raw if raw.strip() else None


def read_input(fields: list[Field], form: FormData) -> dict[str, Any]:
    """The input object the form describes: typed values, blank optional fields left out. Every
    field that cannot be read (or is required and blank) is named in one FormProblem."""
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for f in fields:
        try:
            value = _value(f, form)
        except FormProblem as unreadable:
            errors.extend(unreadable.errors)
            continue
        except ValueError as wrong:
            errors.append(FieldError(f.name, str(wrong)))
            continue
        if value is not None:
            values[f.key] = value
        elif f.required:
            errors.append(FieldError(f.name, "required"))
    if errors:
        raise FormProblem(errors)
    return values
