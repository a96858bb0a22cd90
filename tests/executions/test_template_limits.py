"""A template cannot freeze or exhaust the worker that renders it: anything beyond plain lookups
renders in a child process killed past its deadline or memory limit, and every hostile template
fails with template_too_expensive within the 2 s the security review asks for."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskloom.executions.template_process import TemplateRenderer
from taskloom.executions.templating import (
    TemplateProblem,
    TemplateTooExpensive,
    check_syntax,
    render,
)

TIMEOUT_SECONDS = 1.0
WITHIN_SECONDS = 2.0  # the review's bound for failing a hostile step
SCOPE: dict[str, Any] = {
    "input": {"n": 2, "name": "Ann", "list": ["a", "b"], "s": "x,y"},
    "steps": {"fetch": {"output": {"body": {"id": 7, "tags": ["p", "q"]}}}},
}
A_LOOP = "{% for i in range(2) %}{{ i }}{% endfor %}"  # renders in a child process


@pytest.fixture
async def renderer() -> AsyncIterator[TemplateRenderer]:
    templates = TemplateRenderer(timeout_seconds=TIMEOUT_SECONDS, memory_bytes=256 * 1_048_576)
    await templates.render(A_LOOP, SCOPE, path="warm")  # a child ready, as in a busy worker
    yield templates
    await templates.aclose()


HOSTILE = {
    "nested_range": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "format_width": "{{ '{:>2000000000}'.format(1) }}",
    "percent_width": "{{ '%02000000000d' % 1 }}",
    "repeated_concat": "{% set x = 'aaaaaaaa' %}" + "{% set x = x ~ x %}" * 40 + "{{ x }}",
    "replace": "{% set s = 'a' * 1000000 %}{{ s|replace('a', s) }}",
    "replace_of_constants": "{{ 'aaaaaaaaaa'" + "|replace('a', 'aaaaaaaaaa')" * 10 + " }}",
    "string_times_n": "{{ 'x' * 10**8 }}",
    "join": "{% set s = 'a' * 1000000 %}{{ ([s] * 1000000)|join }}",
    "join_method": "{% set s = 'a' * 1000000 %}{{ ''.join([s] * 1000000) }}",
    "list_holding_one_string_many_times": "{% set s = 'a' * 1000000 %}{{ [s] * 1000000 }}",
    "integer_squaring": "{% set x = 10**1000 %}" + "{% set x = x * x %}" * 30 + "{{ 1 }}",
    "exponential_macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
    "{% endmacro %}{{ f(60) }}",
    "recursive_macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "list_doubling": "{% set x = ['a'] %}{% for i in range(40) %}{% set _ = x.extend(x) %}"
    "{% endfor %}{{ x|length }}",
    "output_growth": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "center": "{{ 'a'|center(2000000000) }}",
}


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_template_fails_as_too_expensive_within_two_seconds(
    renderer: TemplateRenderer, template: str
) -> None:
    check_syntax(template, "args")  # saving it is allowed: only rendering is bounded
    started = time.monotonic()
    with pytest.raises(TemplateTooExpensive) as failure:
        await renderer.render({"value": template}, SCOPE, path="steps.t.args")
    elapsed = time.monotonic() - started
    assert failure.value.code == "template_too_expensive"
    assert failure.value.path.startswith("steps.t.args")
    assert elapsed < WITHIN_SECONDS, elapsed


async def test_the_render_process_is_replaced_after_a_hostile_template(
    renderer: TemplateRenderer,
) -> None:
    for _ in range(3):
        with pytest.raises(TemplateTooExpensive):
            await renderer.render(HOSTILE["nested_range"], SCOPE, path="args")
    assert renderer.processes == 0  # killed, not left running in the background
    assert await renderer.render(A_LOOP, SCOPE, path="args") == "01"


BENIGN = [
    "{{ input.n }}",
    "Hi {{ input.name }}!",
    "{{ steps.fetch.output.body }}",
    "{{ steps.fetch.output.body.tags[0] ~ '-' ~ input.name|upper }}",
    "{{ {'id': steps.fetch.output.body.id, 'n': input.n + 1, 'ok': input.n is number} }}",
    "{% if input.n > 1 %}big{% else %}small{% endif %}",
    "{{ input.missing | default('none') }}",
    "{{ input.list | tojson }}",
    "{{ input.n * 3 }}",
    "{% for item in input.list %}{{ loop.index }}:{{ item }};{% endfor %}",
    "{{ input.list | join(', ') }}",
    "{{ input.s.split(',') }}",
    "{{ '{:>4}|%03d'.format(input.name) % input.n }}",
    "{{ input.name|replace('A', 'E') ~ (lipsum(1)|length > 0) }}",
    "{{ range(3)|list }}",
    "{{ 2 ** 10 }}",
]


@pytest.mark.parametrize("template", BENIGN)
async def test_benign_templates_render_as_they_did_in_process(
    renderer: TemplateRenderer, template: str
) -> None:
    value = {"v": template, "deep": [template, 7]}
    assert await renderer.render(value, SCOPE, path="args") == render(value, SCOPE, "args")


async def test_plain_lookups_render_in_process_without_a_round_trip() -> None:
    templates = TemplateRenderer(timeout_seconds=TIMEOUT_SECONDS, memory_bytes=256 * 1_048_576)
    for template in BENIGN[:8]:
        await templates.render({"v": template}, SCOPE, path="args")
    assert templates.processes == 0
    await templates.aclose()


async def test_template_errors_keep_their_code_and_path(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateProblem) as failure:
        await renderer.render({"a": [A_LOOP, "{{ nope|list }}"]}, SCOPE, path="steps.t.args")
    assert failure.value.code == "template_error"
    assert failure.value.path == "steps.t.args.a[1]"
    assert "undefined" in failure.value.message


async def test_an_unexpected_exception_in_a_template_is_a_template_error(
    renderer: TemplateRenderer,
) -> None:
    with pytest.raises(TemplateProblem) as failure:
        await renderer.render("{{ cycler().current }}", SCOPE, path="args")  # RuntimeError
    assert failure.value.code == "template_error"
    assert "RuntimeError" in failure.value.message
    assert renderer.processes == 1  # kept: it did nothing expensive


def test_checking_a_template_never_evaluates_it() -> None:
    """Jinja folds constant expressions while compiling, and definitions are compiled in the
    API process when saved: that must not run `'%0999999999d' % 1` there."""
    started = time.monotonic()
    for template in (HOSTILE["percent_width"], HOSTILE["replace_of_constants"]):
        check_syntax({"value": template}, "args")
    assert time.monotonic() - started < 0.5


def test_a_template_nested_too_deeply_is_a_template_problem_not_a_crash() -> None:
    nested = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    with pytest.raises(TemplateProblem, match="nested too deeply"):
        check_syntax({"value": nested}, "args")  # a 422 when saved, not a 500
    with pytest.raises(TemplateTooExpensive):
        render({"value": nested}, SCOPE, "args")  # a definition saved before this check
