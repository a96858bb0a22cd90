"""The SVG drawings of a definition: parsed as XML, checked for nodes, edges, classes, escaping
and the absence of `style` attributes (the CSP forbids inline styles)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

from taskloom.web.graph import NODE_HEIGHT, NODE_WIDTH, StepView, render_graph, render_timeline
from taskloom.workflows.graph import Graph

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: str) -> ET.Element:
    assert "style=" not in markup
    assert "<script" not in markup.lower()
    return ET.fromstring(markup)  # noqa: S314 (our own output, no entities)


def _nodes(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        g.attrib["data-step"]: g for g in svg.iter(f"{SVG}g") if "node" in g.attrib["class"].split()
    }


def _edges(svg: ET.Element) -> list[tuple[str, str]]:
    return [
        (p.attrib["data-from"], p.attrib["data-to"])
        for p in svg.iter(f"{SVG}path")
        if p.attrib.get("class") == "edge"
    ]


def _corner(node: ET.Element) -> tuple[int, int]:
    match = re.fullmatch(r"translate\((\d+),(\d+)\)", node.attrib["transform"])
    assert match
    return int(match[1]), int(match[2])


DAG: dict[str, Any] = {
    "steps": [
        {"id": "fetch", "type": "http", "args": {}},
        {"id": "triage", "type": "ai", "needs": ["fetch"], "when": "{{ true }}", "args": {}},
        {
            "id": "each",
            "type": "transform",
            "needs": ["fetch"],
            "for_each": "{{ [1] }}",
            "args": {},
        },
        {"id": "ok", "type": "approval", "needs": ["each"], "args": {}},
        {"id": "done", "type": "transform", "needs": ["triage", "ok"], "args": {}},
    ]
}


def test_a_dag_is_drawn_with_a_node_per_step_and_an_arrow_per_need() -> None:
    svg = _parse(render_graph(Graph.of(DAG)))
    assert svg.attrib["role"] == "img"
    assert svg.attrib["aria-label"] == "Workflow graph: 5 steps, 5 dependencies"
    nodes = _nodes(svg)
    assert list(nodes) == ["fetch", "triage", "each", "ok", "done"]
    assert sorted(_edges(svg)) == sorted(
        [("fetch", "triage"), ("fetch", "each"), ("each", "ok"), ("triage", "done"), ("ok", "done")]
    )
    # layers left to right: fetch, then triage and each, then ok, then done
    x = {step: _corner(node)[0] for step, node in nodes.items()}
    assert x["fetch"] < x["triage"] == x["each"] < x["ok"] < x["done"]
    # an edge leaves its need's right side and ends on the dependant's left side
    for path in svg.iter(f"{SVG}path"):
        if path.attrib.get("class") != "edge":
            continue
        start, end = (
            _corner(nodes[path.attrib["data-from"]]),
            _corner(nodes[path.attrib["data-to"]]),
        )
        numbers = [int(n) for n in re.findall(r"-?\d+", path.attrib["d"])]
        assert (numbers[0], numbers[1]) == (start[0] + NODE_WIDTH, start[1] + NODE_HEIGHT // 2)
        assert (numbers[-2], numbers[-1]) == (end[0], end[1] + NODE_HEIGHT // 2)
        assert path.attrib["marker-end"] == "url(#graph-arrow)"
    # nodes are coloured by type, and a step with `when` is outlined dashed
    assert nodes["fetch"].attrib["class"] == "node type-http"
    assert nodes["triage"].attrib["class"] == "node type-ai conditional"
    assert nodes["ok"].attrib["class"] == "node type-approval"
    for node in nodes.values():
        assert node.find(f"{SVG}title") is not None
        assert node.find(f"{SVG}rect") is not None
    assert [t.text for t in nodes["fetch"].iter(f"{SVG}text")] == ["fetch", "http"]


def test_a_chain_is_drawn_with_arrows_between_consecutive_steps() -> None:
    chain = {"steps": [{"id": s, "type": "transform", "args": {}} for s in ("a", "b", "c")]}
    svg = _parse(render_graph(Graph.of(chain)))
    assert _edges(svg) == [("a", "b"), ("b", "c")]
    assert [_corner(n)[1] for n in _nodes(svg).values()] == [12, 12, 12]


def test_statuses_and_for_each_progress_are_shown_with_classes_and_words() -> None:
    views = {
        "fetch": StepView("succeeded"),
        "triage": StepView("skipped"),
        "each": StepView("running", done=12, total=40),
        "ok": StepView("waiting"),
    }
    svg = _parse(render_graph(Graph.of(DAG), views))
    nodes = _nodes(svg)
    assert "status-succeeded" in nodes["fetch"].attrib["class"].split()
    assert "status-skipped" in nodes["triage"].attrib["class"].split()
    assert "status-waiting" in nodes["ok"].attrib["class"].split()
    assert "status-pending" in nodes["done"].attrib["class"].split()  # no row yet
    badge = [t for t in nodes["each"].iter(f"{SVG}text") if t.attrib.get("class") == "node-badge"]
    assert [t.text for t in badge] == ["12/40"]
    assert "transform · running" in [t.text for t in nodes["each"].iter(f"{SVG}text")]
    assert "waiting" in (nodes["ok"].findtext(f"{SVG}title") or "")
    unknown = _parse(render_graph(Graph.of(DAG), {"fetch": StepView("bogus")}))
    assert "status-unknown" in _nodes(unknown)["fetch"].attrib["class"].split()


def test_hostile_ids_and_types_are_escaped_and_never_become_markup() -> None:
    hostile = {
        "steps": [
            {"id": "<script>alert(1)</script>", "type": '"><svg onload=x>', "args": {}},
            {"id": "b&c", "type": "Http Step!", "needs": ["<script>alert(1)</script>"]},
        ]
    }
    markup = str(render_graph(Graph.of(hostile), {"b&c": StepView("running")}))
    assert "<script>" not in markup
    assert "onload=x>" not in markup
    svg = _parse(markup)  # still well-formed XML
    nodes = _nodes(svg)
    assert set(nodes) == {"<script>alert(1)</script>", "b&c"}
    assert nodes["<script>alert(1)</script>"].attrib["class"].split()[:2] == [
        "node",
        "type-svgonloadx",
    ]
    assert nodes["b&c"].attrib["class"].split()[1] == "type-httpstep"
    assert _edges(svg) == [("<script>alert(1)</script>", "b&c")]
    assert all(not key.startswith("on") for el in svg.iter() for key in el.attrib)


def test_long_ids_are_cut_in_the_label_and_whole_in_the_tooltip() -> None:
    long_id = "a" * 64
    svg = _parse(render_graph(Graph.of({"steps": [{"id": long_id, "type": "http"}]})))
    node = _nodes(svg)[long_id]
    assert next(node.iter(f"{SVG}text")).text == "a" * 17 + "…"
    assert long_id in (node.findtext(f"{SVG}title") or "")


def test_the_timeline_draws_a_bar_per_started_step_at_its_offset() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    views = {
        "fetch": StepView("succeeded", started_at=t0, finished_at=t0 + timedelta(seconds=2)),
        "triage": StepView(
            "failed", started_at=t0 + timedelta(seconds=2), finished_at=t0 + timedelta(seconds=3)
        ),
        "each": StepView("running", started_at=t0 + timedelta(seconds=2)),
        "ok": StepView("pending"),
    }
    markup = render_timeline(Graph.of(DAG), views, now=t0 + timedelta(seconds=4))
    svg = _parse(markup)
    assert svg.attrib["role"] == "img"
    assert svg.attrib["aria-label"] == "Timeline of 3 steps over 4.0 s"
    bars = {
        g.attrib["data-step"]: g for g in svg.iter(f"{SVG}g") if "bar" in g.attrib["class"].split()
    }
    assert list(bars) == ["fetch", "triage", "each"]
    assert "status-failed" in bars["triage"].attrib["class"].split()
    rects = {step: g.find(f"{SVG}rect") for step, g in bars.items()}
    x = {step: int(r.attrib["x"]) for step, r in rects.items() if r is not None}
    w = {step: int(r.attrib["width"]) for step, r in rects.items() if r is not None}
    assert x["fetch"] < x["triage"] == x["each"]
    assert w["fetch"] == 2 * w["triage"]  # 2 s against 1 s
    assert w["each"] == w["fetch"]  # running: until now, 2 s
    assert x["fetch"] + w["fetch"] == x["triage"]
    assert "took 1.0 s" in (bars["triage"].findtext(f"{SVG}title") or "")
