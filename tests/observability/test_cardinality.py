"""Label values tenants choose cannot grow the number of series without end: past the first 100
tool names and breaker names a process sees, they are folded into `other` (docs/OBSERVABILITY.md);
a folded breaker's state still shows, as the worst state of `other`."""

from __future__ import annotations

import itertools

from prometheus_client import REGISTRY

from taskloom.breakers import BREAKERS, BreakerState
from taskloom.observability.metrics import (
    BREAKER_NAMES,
    MAX_NAMED_BREAKERS,
    MAX_NAMED_TOOLS,
    OTHER,
    TOOL_NAMES,
    BoundedLabel,
)
from taskloom.tools.executor import _tool_label

_counter = itertools.count()


def _breaker_series() -> dict[str, float]:
    return {
        sample.labels["name"]: sample.value
        for family in REGISTRY.collect()
        if family.name == "circuit_breaker_state"
        for sample in family.samples
    }


def test_a_bounded_label_keeps_the_first_values_and_folds_the_rest() -> None:
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    label.forget("b")
    assert label("c") == "c"


def test_tool_names_past_the_limit_count_as_other() -> None:
    names = [f"cardinality-{next(_counter)}" for _ in range(MAX_NAMED_TOOLS + 5)]
    try:
        labels = [_tool_label("mcp", name) for name in names]
        assert labels[-1] == OTHER
        assert len({label for label in labels if label != OTHER}) <= MAX_NAMED_TOOLS
        named = next(label for label in labels if label != OTHER)
        assert _tool_label("mcp", named) == named  # a name keeps its series
    finally:
        for name in names:
            TOOL_NAMES.forget(f"mcp\x00{name}")


async def test_breakers_past_the_limit_share_other_which_shows_the_worst_state() -> None:
    names = [f"tool:cardinality-{next(_counter)}" for _ in range(MAX_NAMED_BREAKERS + 20)]
    try:
        breakers = [BREAKERS.get(name, failure_threshold=1) for name in names]
        series = _breaker_series()
        assert OTHER in series
        assert len(series) <= MAX_NAMED_BREAKERS + 1
        assert names[-1] not in series
        assert series[OTHER] == BreakerState.CLOSED
        await breakers[-1].record_failure()  # a folded breaker opens
        assert _breaker_series()[OTHER] == BreakerState.OPEN
        BREAKERS.remove(names[-1])
        assert _breaker_series()[OTHER] == BreakerState.CLOSED
    finally:
        for name in names:
            BREAKERS.remove(name)
    assert not any(name.startswith("tool:cardinality-") for name in _breaker_series())
    assert all(BREAKER_NAMES(name) == name for name in names[:1])  # places were freed
    BREAKERS.remove(names[0])
