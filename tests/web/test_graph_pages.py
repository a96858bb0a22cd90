"""The workflow page draws its definition's graph and the execution page draws the graph with
each step's status and a timeline, as inline SVG under the strict CSP."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionStep, WorkflowExecution
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.web.support import text_of
from tests.web.test_security_headers import CSP

SVG = "{http://www.w3.org/2000/svg}"
DAG = {
    "steps": [
        {"id": "fetch", "type": "http", "args": {"url": "https://example.com/"}},
        {
            "id": "check",
            "type": "transform",
            "needs": ["fetch"],
            "when": "{{ steps.fetch.output.status == 200 }}",
            "args": {"value": "{{ steps.fetch.output.status }}"},
        },
        {"id": "later", "type": "wait", "needs": ["fetch"], "args": {"for": "5m"}},
        {
            "id": "done",
            "type": "transform",
            "needs": ["check", "later"],
            "join": "all_done",
            "args": {"value": "done"},
        },
    ]
}


def _drawings(page: httpx.Response) -> dict[str, ET.Element]:
    """The page's inline SVGs by class, parsed as XML."""
    assert page.status_code == 200, page.text
    assert page.headers["content-security-policy"] == CSP
    assert "style=" not in page.text
    # No inline script: only the UI's own files (the execution page's live events script).
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page.text, flags=re.DOTALL)
    assert scripts == [""] * len(scripts)
    assert all(
        tag.startswith('<script src="/ui/static/')
        for tag in re.findall(r"<script[^>]*>", page.text)
    )
    found = {}
    for markup in re.findall(r"<svg .*?</svg>", page.text, flags=re.DOTALL):
        svg = ET.fromstring(markup)  # noqa: S314 (our own output, no entities)
        found[svg.attrib["class"]] = svg
    return found


def _nodes(svg: ET.Element) -> dict[str, str]:
    return {
        g.attrib["data-step"]: g.attrib["class"]
        for g in svg.iter(f"{SVG}g")
        if "node" in g.attrib["class"].split()
    }


async def _workflow(client: httpx.AsyncClient, owner: Account) -> str:
    response = await client.post(
        "/api/workflows", json={"name": "Graph", "definition": DAG}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_the_workflow_page_draws_the_definitions_graph(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    drawings = _drawings(await owner_browser.get(f"/ui/workflows/{workflow_id}"))
    graph = drawings["graph"]
    assert graph.attrib["aria-label"] == "Workflow graph: 4 steps, 4 dependencies"
    assert _nodes(graph) == {
        "fetch": "node type-http",
        "check": "node type-transform conditional",
        "later": "node type-wait",
        "done": "node type-transform",
    }
    edges = {
        (p.attrib["data-from"], p.attrib["data-to"])
        for p in graph.iter(f"{SVG}path")
        if p.attrib.get("class") == "edge"
    }
    assert edges == {("fetch", "check"), ("fetch", "later"), ("check", "done"), ("later", "done")}
    assert "timeline" not in drawings


async def test_the_execution_page_draws_each_steps_status_and_a_timeline(
    client: httpx.AsyncClient,
    owner_browser: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
) -> None:
    workflow_id = await _workflow(client, owner)
    accepted = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=owner.headers
    )
    execution_id = uuid.UUID(accepted.json()["execution_id"])
    queued = _drawings(await owner_browser.get(f"/ui/executions/{execution_id}"))
    assert set(_nodes(queued["graph"]).values()) == {
        "node type-http status-pending",
        "node type-transform conditional status-pending",
        "node type-wait status-pending",
        "node type-transform status-pending",
    }
    assert "timeline" not in queued  # nothing started yet

    start = datetime.now(UTC) - timedelta(seconds=10)
    rows = [
        ("fetch", 0, "http", "succeeded", start, start + timedelta(seconds=2)),
        ("check", 1, "transform", "skipped", start + timedelta(seconds=2), None),
        ("later", 2, "wait", "running", start + timedelta(seconds=2), None),
    ]
    # What a worker records as the steps go (no worker runs in this test).
    async with system_transaction(runtime.database) as db:
        for step_id, position, step_type, status, started, finished in rows:
            db.add(
                ExecutionStep(
                    org_id=owner.org_id,
                    execution_id=execution_id,
                    step_id=step_id,
                    position=position,
                    type=step_type,
                    status=status,
                    attempts=1,
                    started_at=started,
                    finished_at=finished,
                )
            )
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == execution_id)
            .values(status="running", started_at=start)
        )
    drawings = _drawings(await owner_browser.get(f"/ui/executions/{execution_id}"))
    assert _nodes(drawings["graph"]) == {
        "fetch": "node type-http status-succeeded",
        "check": "node type-transform conditional status-skipped",
        "later": "node type-wait status-running",
        "done": "node type-transform status-pending",
    }
    timeline = drawings["timeline"]
    bars = [g.attrib["data-step"] for g in timeline.iter(f"{SVG}g") if g.attrib.get("data-step")]
    assert bars == ["fetch", "check", "later"]
    assert timeline.attrib["role"] == "img"


async def test_the_stylesheet_colours_the_drawing_by_type_and_status(
    client: httpx.AsyncClient,
) -> None:
    css = (await client.get("/ui/static/app.css")).text
    for selector in (
        ".type-http rect",
        ".type-approval rect",
        ".node.conditional rect",
        ".node.status-failed rect",
        ".node.status-waiting rect",
        ".bar.status-succeeded rect",
    ):
        assert selector in css, selector


async def test_the_workflow_page_shows_its_ai_spend_and_budgets(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    response = await client.post(
        "/api/workflows",
        json={"name": "Costly", "definition": {**DAG, "max_cost_usd": "0.75"}},
        headers=owner.headers,
    )
    workflow_id = response.json()["id"]
    assert "(no monthly budget of its own); at most $0.75 per execution." in text_of(
        await owner_browser.get(f"/ui/workflows/{workflow_id}")
    )
    await client.put(
        f"/api/ai/workflows/{workflow_id}/budget",
        json={"monthly_budget_usd": "20"},
        headers=owner.headers,
    )
    assert "AI spend this month: $0.00 of its $20.00 monthly budget;" in text_of(
        await owner_browser.get(f"/ui/workflows/{workflow_id}")
    )
