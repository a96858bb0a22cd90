"""The graph of a definition: chains, DAGs, cycles and layers, without a database."""

from __future__ import annotations

from typing import Any

from taskloom.workflows.graph import JOINS, Graph


def _definition(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [{"type": "transform", "args": {}, **step} for step in steps]}


def test_a_list_without_needs_is_a_chain_in_list_order() -> None:
    graph = Graph.of(_definition({"id": "a"}, {"id": "b"}, {"id": "c"}))
    assert not graph.is_dag
    assert graph.order == ("a", "b", "c")
    assert dict(graph.needs) == {"a": (), "b": ("a",), "c": ("b",)}
    assert graph.roots() == ("a",)
    assert graph.leaves() == ("c",)
    assert graph.dependants("a") == ("b",)
    assert graph.upstream("c") == {"a", "b"}
    assert graph.layers() == {"a": 0, "b": 1, "c": 2}
    assert graph.cycle() is None
    assert graph.steps["b"]["id"] == "b"


def test_one_step_declaring_needs_makes_a_dag_where_steps_without_needs_are_roots() -> None:
    graph = Graph.of(
        _definition(
            {"id": "fetch"},
            {"id": "other"},
            {"id": "left", "needs": ["fetch"]},
            {"id": "right", "needs": ["fetch"]},
            {"id": "join", "needs": ["left", "right", "other"]},
            {"id": "tail", "needs": ["join"]},
            {"id": "late", "needs": ["fetch"]},
        )
    )
    assert graph.is_dag
    assert graph.needs["fetch"] == ()
    assert graph.needs["join"] == ("left", "right", "other")
    assert graph.roots() == ("fetch", "other")
    assert graph.leaves() == ("tail", "late")
    assert graph.dependants("fetch") == ("left", "right", "late")
    assert graph.upstream("tail") == {"join", "left", "right", "other", "fetch"}
    assert graph.upstream("fetch") == frozenset()
    assert graph.layers() == {
        "fetch": 0,
        "other": 0,
        "left": 1,
        "right": 1,
        "join": 2,
        "tail": 3,
        "late": 1,
    }
    assert graph.cycle() is None


def test_an_empty_needs_list_declares_a_dag() -> None:
    graph = Graph.of(_definition({"id": "a", "needs": []}, {"id": "b"}))
    assert graph.is_dag
    assert graph.roots() == ("a", "b")
    assert graph.layers() == {"a": 0, "b": 0}


def test_layers_are_the_longest_path_from_a_root() -> None:
    graph = Graph.of(
        _definition(
            {"id": "a", "needs": []},
            {"id": "b", "needs": ["a"]},
            {"id": "c", "needs": ["b"]},
            {"id": "d", "needs": ["a", "c"]},
        )
    )
    assert graph.layers()["d"] == 3


def test_unknown_needs_are_kept_but_ignored_when_walking() -> None:
    graph = Graph.of(
        _definition({"id": "a", "needs": ["ghost"]}, {"id": "b", "needs": ["a", "ghost"]})
    )
    assert graph.needs["a"] == ("ghost",)
    assert graph.upstream("b") == {"a"}
    assert graph.roots() == ("a",)
    assert graph.layers() == {"a": 0, "b": 1}
    assert graph.cycle() is None
    assert graph.dependants("ghost") == ("a", "b")


def test_a_cycle_is_named_in_the_direction_work_flows_from_its_first_step() -> None:
    # b needs a, c needs b, a needs c: a → b → c → a
    graph = Graph.of(
        _definition(
            {"id": "start", "needs": []},
            {"id": "c", "needs": ["b"]},
            {"id": "a", "needs": ["c", "start"]},
            {"id": "b", "needs": ["a"]},
        )
    )
    assert graph.cycle() == ["c", "a", "b", "c"]
    assert graph.upstream("a") == {"a", "b", "c", "start"}
    layers = graph.layers()  # still terminates and places every step
    assert set(layers) == {"start", "c", "a", "b"}
    assert layers["start"] == 0


def test_a_step_needing_itself_is_a_cycle_of_one() -> None:
    graph = Graph.of(_definition({"id": "a", "needs": ["a"]}))
    assert graph.cycle() == ["a", "a"]
    assert graph.roots() == ()
    assert graph.layers() == {"a": 0}


def test_a_cycle_behind_a_dag_part_is_found() -> None:
    graph = Graph.of(
        _definition(
            {"id": "a", "needs": []},
            {"id": "b", "needs": ["a", "d"]},
            {"id": "c", "needs": ["b"]},
            {"id": "d", "needs": ["c"]},
        )
    )
    assert graph.cycle() == ["b", "c", "d", "b"]


def test_a_repeated_id_keeps_its_first_step_and_repeated_needs_count_once() -> None:
    graph = Graph.of(
        _definition(
            {"id": "a", "args": {"n": 1}},
            {"id": "a", "args": {"n": 2}},
            {"id": "b", "needs": ["a", "a"]},
        )
    )
    assert graph.order == ("a", "b")
    assert graph.steps["a"]["args"] == {"n": 1}
    assert graph.needs["b"] == ("a",)
    assert graph.layers() == {"a": 0, "b": 1}


def test_a_large_chain_walks_without_recursion() -> None:
    graph = Graph.of(_definition(*({"id": f"s{i}"} for i in range(5000))))
    assert graph.cycle() is None
    assert len(graph.upstream("s4999")) == 4999


def test_joins_are_the_three_rules() -> None:
    assert JOINS == ("all_succeeded", "all_done", "any_succeeded")
