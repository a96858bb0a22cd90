"""A mapping's keys win over dict methods of the same name in templates (`steps.items.output`,
`input.keys`): Jinja would otherwise hand the template the bound method."""

from __future__ import annotations

from taskloom.executions.templating import render


def test_keys_named_like_dict_methods_read_as_data() -> None:
    scope = {
        "steps": {"items": {"output": [1, 2]}, "copy": {"output": "copied"}},
        "input": {"keys": "k", "get": {"values": 7}},
    }
    template = {
        "items": "{{ steps.items.output }}",
        "copy": "{{ steps.copy.output }}",
        "text": "{{ input.keys }}-{{ input.get.values }}",
    }
    assert render(template, scope) == {"items": [1, 2], "copy": "copied", "text": "k-7"}


def test_dict_methods_still_work_where_no_key_hides_them() -> None:
    scope = {"input": {"a": 1, "b": 2}}
    assert render("{{ input.keys() | sort | join(',') }}", scope) == "a,b"
    assert render("{{ input.get('a') }}", scope) == 1
