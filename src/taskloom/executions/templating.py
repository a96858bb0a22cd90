"""Step arguments are Jinja2 templates, rendered in a sandbox with `input` (the execution's
input) and `steps.<id>.output` (earlier steps' outputs) in scope.

A string that is exactly one expression, `"{{ steps.fetch.output.body }}"`, yields the value
itself (an object, a list, a number), as n8n expressions do; any other string renders to text.
Undefined names are errors, not empty strings, so a typo fails the step instead of sending "".

`render` runs in the calling process with no time limit. The worker calls it directly only for
*cheap* templates (`is_cheap`): lookups, comparisons, literals and a few linear filters, with
no loop, call, assignment, macro or multiplying operator, so their cost is bounded by the size
of the scope. Every other template is rendered by `template_process.TemplateRenderer` in a
child process that is killed past its deadline or memory limit (docs/adr/0005).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

MAX_RENDERED_CHARS = 1_000_000
MAX_POWER_EXPONENT = 1_000
MAX_INTEGER_BITS = 100_000  # about 30,000 digits: more than any real template needs
MAX_CHEAP_LOOKUPS = 4  # names a cheap template may read: its cost grows with each


class _NoFolding(CodeGenerator):
    """Jinja evaluates constant expressions while compiling (`{{ '%0999999999d' % 1 }}`,
    `{{ 'a'|replace('a', 'aaaa')|replace(...) }}`), and compiling happens in the API process
    (definition checks) and in the worker itself, outside any render limit. Only literal text
    and constants are emitted as they are; everything else is evaluated when rendering."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        if not isinstance(node, nodes.TemplateData | nodes.Const):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox blocks unsafe attributes; this also bounds `*` and `**`, which would let
    a template such as `{{ 'a' * 10**12 }}` exhaust a worker's memory before any deadline."""

    intercepted_binops = frozenset({"*", "**"})
    code_generator_class = _NoFolding

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`a.b` on a mapping reads its key `b` first (Jinja tries the attribute first): a step
        with the id `items` or `copy`, an input field named `keys`, reads as the data it is,
        not as a dict method. Keys are data, so no sandbox check applies to them."""
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
                raise _TooExpensive(f"exponent larger than {MAX_POWER_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() * max(right, 0))
            return left**right
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(left.bit_length() + right.bit_length())
            return left * right
        sized, count = (left, right) if isinstance(left, str | list | tuple) else (right, left)
        too_long = (
            isinstance(sized, str | list | tuple)
            and isinstance(count, int)
            and len(sized) * count > MAX_RENDERED_CHARS
        )
        if too_long:
            raise _TooExpensive(f"result longer than {MAX_RENDERED_CHARS}")
        return left * right


def _check_bits(bits: int) -> None:
    if bits > MAX_INTEGER_BITS:
        raise _TooExpensive(f"integer larger than {MAX_INTEGER_BITS} bits")


class _TooExpensive(Exception):
    """Raised inside a render by the sandbox's own checks."""


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, optimized=False)
_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)


class TemplateProblem(ValueError):
    """A template that does not parse or does not render; `path` names where it sits."""

    code = "template_error"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class TemplateTooExpensive(TemplateProblem):
    """A template that needs more time or memory than a render may take."""

    code = "template_too_expensive"


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
        except RecursionError as exc:
            raise TemplateProblem(where, "template error: nested too deeply") from exc


def is_cheap(value: Any) -> bool:
    """Whether every template in `value` may be rendered in-process (see the module doc).
    A template that does not compile counts as cheap: it fails at once, as it would anywhere."""
    for _, text in _strings(value, ""):
        if "{" in text:
            try:
                if not _compiled(text).cheap:
                    return False
            except (TemplateError, RecursionError):  # fails at once when rendered
                continue
    return True


def names_used(value: Any) -> set[str]:
    """The scope's names (`input`, `steps`) that the templates in `value` read."""
    used: set[str] = set()
    for _, text in _strings(value, ""):
        if "{" in text:
            try:
                used |= _compiled(text).names
            except (TemplateError, RecursionError):
                continue
    return used


def render(value: Any, scope: dict[str, Any], path: str = "args") -> Any:
    """Render every string in `value` (recursively through objects and lists), in-process."""
    if isinstance(value, str):
        return _render_string(value, scope, path)
    if isinstance(value, dict):
        return {key: render(item, scope, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, scope, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


class _Compiled(NamedTuple):
    expression: bool  # exactly one `{{ expression }}`: yields its value
    code: Any  # a jinja2 Template or TemplateExpression
    cheap: bool
    names: frozenset[str]


@lru_cache(maxsize=2048)
def _compiled(text: str) -> _Compiled:
    """Compiled once per distinct text, not once per execution (the cost showed in the
    worker's profile)."""
    tree = _ENV.parse(text)
    # Not jinja2.meta.find_undeclared_variables: its code generator folds constants.
    names = frozenset(name.name for name in tree.find_all(nodes.Name) if name.ctx == "load")
    cheap = _cheap_tree(tree)
    match = _ONE_EXPRESSION.match(text)
    if match:
        expression = _ENV.compile_expression(match["expr"], undefined_to_none=False)
        return _Compiled(True, expression, cheap, names)
    return _Compiled(False, _ENV.from_string(text), cheap, names)


def _render_string(text: str, scope: dict[str, Any], path: str) -> Any:
    if "{" not in text:
        return text
    try:
        expression, compiled, _, _ = _compiled(text)
        if expression:
            return _as_json_value(compiled(**scope), path)
        rendered = compiled.render(**scope)
    except TemplateError as exc:
        raise TemplateProblem(path, f"template error: {exc.message or exc}") from exc
    except TemplateProblem:
        raise
    except (_TooExpensive, MemoryError, RecursionError) as exc:
        raise TemplateTooExpensive(path, f"too expensive to render ({_reason(exc)})") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateProblem(path, f"template error: {exc}") from exc
    if len(rendered) > MAX_RENDERED_CHARS:
        raise TemplateTooExpensive(path, f"renders to more than {MAX_RENDERED_CHARS} characters")
    return rendered


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _as_json_value(value: Any, path: str) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError naming the missing name
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TemplateProblem(path, f"yields a {type(value).__name__}, not JSON") from exc
    if len(encoded) > MAX_RENDERED_CHARS:
        raise TemplateTooExpensive(path, f"renders to more than {MAX_RENDERED_CHARS} characters")
    return value


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in _strings(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [s for i, item in enumerate(value) for s in _strings(item, f"{path}[{i}]")]
    return []


# --- which templates are cheap ----------------------------------------------------------------
# Each node below does work linear in the size of its operands, and without loops, calls or
# assignments a template evaluates each node once: its cost is bounded by (its own size) x (the
# size of what its few names read). Anything else, including every filter not listed, goes to
# the child process.

_CHEAP_NODES: frozenset[type[nodes.Node]] = frozenset(
    {
        nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.CondExpr,
        nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Slice,
        nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair, nodes.Keyword,
        nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos,
        nodes.Concat, nodes.Add, nodes.Sub, nodes.Div, nodes.FloorDiv,
        nodes.Filter, nodes.Test,
    }
)  # fmt: skip
_CHEAP_FILTERS = frozenset(
    {
        "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "int",
        "last", "length", "lower", "round", "safe", "string", "tojson", "trim", "upper",
    }
)  # fmt: skip
_CHEAP_TESTS = frozenset(
    {
        "boolean", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
        "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan",
        "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string",
        "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=",
    }
)  # fmt: skip


def _cheap_tree(tree: nodes.Template) -> bool:
    lookups = 0
    pending: list[nodes.Node] = [tree]
    while pending:
        node = pending.pop()
        if type(node) not in _CHEAP_NODES:
            return False
        if isinstance(node, nodes.Name):
            if node.ctx != "load":
                return False
            lookups += 1
        if isinstance(node, nodes.Filter | nodes.Test) and not _cheap_call(node):
            return False
        pending.extend(node.iter_child_nodes())
    return lookups <= MAX_CHEAP_LOOKUPS


def _cheap_call(node: nodes.Filter | nodes.Test) -> bool:
    """A listed filter or test whose arguments are constants."""
    names = _CHEAP_FILTERS if isinstance(node, nodes.Filter) else _CHEAP_TESTS
    arguments = [*node.args, *(keyword.value for keyword in node.kwargs)]
    return (
        node.name in names
        and node.dyn_args is None
        and node.dyn_kwargs is None
        and all(isinstance(argument, nodes.Const) for argument in arguments)
    )


# --- which secrets a template reads ---------------------------------------------------------
# A template may read a secret only as `secrets.NAME`, written out as it is: alone in `{{ }}`
# or joined to text with `~`. Redaction recognises a value only as it is stored, so a filter, a
# slice or a comparison would let a step's output carry it (or a test reveal it) unrecognised.


class SecretMisused(TemplateProblem):
    code = "secret_misused"


def secret_references(value: Any, path: str = "") -> frozenset[str]:
    """The secret names the templates in `value` read (`secrets.NAME`). Raises SecretMisused for
    any other use of `secrets`. Cheap for the usual definition, which mentions no secret: one
    walk over its strings, nothing parsed or allocated (the worker asks for every step of every
    execution it runs)."""
    if not _mentions_secrets(value):
        return frozenset()
    names: set[str] = set()
    for where, text in _strings(value, path):
        if "secrets" in text and "{" in text:
            try:
                found, problem = _secret_refs(text)
            except (TemplateError, RecursionError):
                continue  # check_syntax refuses it; rendering would fail alike
            if problem is not None:
                raise SecretMisused(where, problem)
            names |= found
    return frozenset(names)


def _mentions_secrets(value: Any) -> bool:
    if isinstance(value, str):
        return "secrets" in value
    if isinstance(value, dict):
        return any(_mentions_secrets(item) for item in value.values())
    if isinstance(value, list):
        return any(_mentions_secrets(item) for item in value)
    return False


_PLAIN_BLOCKS = (nodes.Template, nodes.If, nodes.For, nodes.Output)


@lru_cache(maxsize=1024)
def _secret_refs(text: str) -> tuple[frozenset[str], str | None]:
    tree = _ENV.parse(text)
    found: set[str] = set()

    def walk(node: nodes.Node, ancestors: tuple[nodes.Node, ...]) -> str | None:
        if isinstance(node, nodes.Name) and node.name == "secrets":
            parent = ancestors[-1] if ancestors else None
            if not isinstance(parent, nodes.Getattr) or parent.node is not node:
                return "read a secret as secrets.NAME (not `secrets` itself, nor secrets[...])"
            for depth in range(len(ancestors) - 2, -1, -1):
                above = ancestors[depth]
                if isinstance(above, nodes.Output):
                    # Written straight into the text: not inside a {% set %}, {% filter %},
                    # macro or call block, which would capture it for something else.
                    if all(isinstance(a, _PLAIN_BLOCKS) for a in ancestors[:depth]):
                        found.add(parent.attr)
                        return None
                    return f"secrets.{parent.attr} may not be captured by a block"
                if not isinstance(above, nodes.Concat):
                    return (
                        f"secrets.{parent.attr} may only be output as it is "
                        "({{ secrets.NAME }}, or joined to text with ~): a filter, test, "
                        "operator or lookup on it would hide it from redaction"
                    )
            return f"secrets.{parent.attr} may only be output as it is"
        for child in node.iter_child_nodes():
            if (problem := walk(child, (*ancestors, node))) is not None:
                return problem
        return None

    problem = walk(tree, ())
    return frozenset(found), problem
