"""web/schema_form.py: which control each property of an input schema becomes, what the form
starts with, and how a posted form is read back as typed JSON (the schema's other rules are
checked by the executions service, tested in tests/executions)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import FormData

from taskloom.executions.service import check_input
from taskloom.web.forms import FieldError, FormProblem
from taskloom.web.schema_form import Kind, fields_of, initial_values, read_input

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["email", "count"],
    "properties": {
        "email": {"type": "string", "format": "email", "title": "Email address"},
        "site": {"type": "string", "format": "uri"},
        "day": {"type": "string", "format": "date", "description": "The day to report on"},
        "name": {"type": ["string", "null"], "default": "Ada"},
        "plan": {"type": "string", "enum": ["free", "pro"], "default": "pro"},
        "level": {"enum": [1, 2, 3]},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number"},
        "notify": {"type": "boolean", "default": True},
        "tags": {"type": "array", "items": {"type": "string"}, "default": ["a"]},
        "meta": {"type": "object"},
        "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    },
}


def _form(**values: str) -> FormData:
    return FormData([(f"input.{key}", value) for key, value in values.items()])


def test_each_property_becomes_the_control_its_type_and_format_call_for() -> None:
    fields = fields_of(SCHEMA)
    assert fields is not None
    kinds = {f.key: f.kind for f in fields}
    assert kinds == {
        "email": Kind.EMAIL,
        "site": Kind.URL,
        "day": Kind.DATE,
        "name": Kind.TEXT,
        "plan": Kind.SELECT,
        "level": Kind.SELECT,
        "count": Kind.INTEGER,
        "ratio": Kind.NUMBER,
        "notify": Kind.CHECKBOX,
        "tags": Kind.JSON,
        "meta": Kind.JSON,
        "either": Kind.JSON,
    }
    by_key = {f.key: f for f in fields}
    assert by_key["email"].label == "Email address"
    assert by_key["site"].label == "site"  # no title: the property's name
    assert by_key["day"].description == "The day to report on"
    assert [f.key for f in fields if f.required] == ["email", "count"]
    assert (by_key["count"].minimum, by_key["count"].maximum, by_key["count"].step) == (1, 10, "1")
    assert by_key["ratio"].step == "any"
    assert by_key["plan"].options == {"free": "free", "pro": "pro"}
    assert by_key["level"].options == {"1": 1, "2": 2, "3": 3}
    assert by_key["count"].name == "input.count"  # the path check_input's errors name


@pytest.mark.parametrize(
    "schema",
    [
        None,
        {},
        {"type": "object"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "properties": {}},
        {"type": "string", "properties": {"x": {"type": "string"}}},
        {"properties": ["not", "a", "mapping"]},
    ],
)
def test_a_schema_without_properties_of_an_object_has_no_form(schema: Any) -> None:
    assert fields_of(schema) is None


def test_enums_that_would_read_ambiguously_stay_json() -> None:
    fields = fields_of(
        {
            "properties": {
                "flag": {"enum": [True, False]},
                "mixed": {"enum": ["1", 1]},
                "nullable": {"enum": ["a", None]},
                "anything": True,
            }
        }
    )
    assert fields is not None
    assert [f.kind for f in fields] == [Kind.JSON] * 4


def test_the_form_starts_with_the_schemas_defaults() -> None:
    fields = fields_of(SCHEMA)
    assert fields is not None
    values = initial_values(fields)
    assert values["input.name"] == "Ada"
    assert values["input.plan"] == "pro"
    assert values["input.notify"] == "on"
    assert values["input.tags"] == '[\n  "a"\n]'
    assert values["input.email"] == ""
    assert values["input.count"] == ""


def test_a_posted_form_is_read_as_typed_json_with_blank_optional_fields_left_out() -> None:
    fields = fields_of(SCHEMA)
    assert fields is not None
    posted = _form(
        email="ada@example.test",
        site="",
        day="2027-03-28",
        name="  ",
        plan="free",
        level="2",
        count="3",
        ratio="0.25",
        tags='["x", "y"]',
        meta="",
        either="7",
    )  # notify unchecked: a checkbox posts nothing
    value = read_input(fields, posted)
    assert value == {
        "email": "ada@example.test",
        "day": "2027-03-28",
        "plan": "free",
        "level": 2,
        "count": 3,
        "ratio": 0.25,
        "notify": False,
        "tags": ["x", "y"],
        "either": 7,
    }
    check_input({"input_schema": SCHEMA}, value)  # conforms
    assert read_input(fields, _form(email="a@b.test", count="4", notify="on"))["notify"] is True


def test_numbers_read_as_json_numbers() -> None:
    fields = fields_of({"properties": {"n": {"type": "number"}, "i": {"type": "integer"}}})
    assert fields is not None
    assert read_input(fields, _form(n="2.0", i="1e1")) == {"n": 2, "i": 10}
    assert read_input(fields, _form(n="-0.5", i=" 7 ")) == {"n": -0.5, "i": 7}


def test_every_unreadable_or_missing_field_is_named_at_once() -> None:
    fields = fields_of(SCHEMA)
    assert fields is not None
    with pytest.raises(FormProblem) as problem:
        read_input(
            fields,
            _form(email="", count="2.5", ratio="1e400", plan="gold", tags="[1,", meta="NaN"),
        )
    errors = {e.field: e.message for e in problem.value.errors}
    assert errors.keys() == {
        "input.email",
        "input.count",
        "input.ratio",
        "input.plan",
        "input.tags",
        "input.meta",
    }
    assert errors["input.email"] == "required"
    assert errors["input.count"] == "not a whole number"
    assert errors["input.ratio"] == "not a finite number"
    assert errors["input.plan"] == "choose one of the listed values"
    assert errors["input.tags"].startswith("not valid JSON: ")
    assert "line 1" in errors["input.tags"]
    assert FieldError("input.meta", errors["input.meta"]) in problem.value.errors
    with pytest.raises(FormProblem) as words:
        read_input(fields, _form(email="a@b.test", count="three"))
    assert words.value.errors == [FieldError("input.count", "not a number")]
