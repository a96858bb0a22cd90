"""Issue 6's promise, checked on a real scrape: after a scripted mix of requests, AI calls and
tool calls every metric moved by exactly the expected amount (nothing counted twice), and the
histograms expose `_bucket`, `_sum` and `_count`."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskloom.ai.executor import AiCall, AiStepError, run_ai
from taskloom.runtime import Runtime
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic
from tests.fakes.tool_apis import FakeGitHub
from tests.tools.conftest import connect

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HISTOGRAMS = (
    "http_request_duration_seconds",
    "ai_request_duration_seconds",
    "mcp_tool_call_duration_seconds",
)


async def _scrape(api: httpx.AsyncClient) -> Samples:
    response = await api.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _moved(before: Samples, after: Samples, prefix: str) -> Counter[str]:
    """Total change per sample name among series whose name starts with `prefix`."""
    moved: Counter[str] = Counter()
    for (name, labels), value in after.items():
        if name.startswith(prefix) and not name.endswith(("_bucket", "_sum", "_created")):
            moved[name] += value - before.get((name, labels), 0.0)
    return +moved


async def test_a_scripted_mix_moves_every_metric_by_exactly_the_expected_amount(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
    fake_github: FakeGitHub,
) -> None:
    assert admin.org_id is not None
    await connect(tools_api, admin, "anthropic", fake_anthropic.base_url, {"api_key": "test-key"})
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    before = await _scrape(tools_api)

    # HTTP: 3 x 200 on one route, 2 x 404 on ids of the same route template.
    for _ in range(3):
        assert (await tools_api.get("/api/workflows", headers=admin.headers)).status_code == 200
    for missing in ("7a0c0a47-0000-4000-8000-000000000001", "7a0c0a47-0000-4000-8000-000000000002"):
        got = await tools_api.get(f"/api/workflows/{missing}", headers=admin.headers)
        assert got.status_code == 404
    # AI: one success (1,000 in / 200 out on Haiku 4.5 = $0.002), one overloaded failure.
    fake_anthropic.reply("fine", input_tokens=1_000, output_tokens=200)
    call = AiCall(
        org_id=admin.org_id,
        user_id=None,
        execution_id=None,
        step_id="m",
        prompt="Hi",
        category="quick",
    )
    await run_ai(tools_runtime, call)
    fake_anthropic.fail_next(1, 529)
    with pytest.raises(AiStepError):
        await run_ai(tools_runtime, call)
    # Tools: a read, the same read again (cache hit, not a call), a write, a failed write.
    repo = {"owner": "octocat", "repo": "hello-world"}
    for _ in range(2):
        await call_tool(
            tools_runtime,
            org_id=admin.org_id,
            connection_ref="github",
            tool_name="getIssues",
            args=repo,
        )
    await call_tool(
        tools_runtime,
        org_id=admin.org_id,
        connection_ref="github",
        tool_name="createIssue",
        args={"title": "t", **repo},
    )
    fake_github.fail_next(1, 500)
    with pytest.raises(ToolError):
        await call_tool(
            tools_runtime,
            org_id=admin.org_id,
            connection_ref="github",
            tool_name="createIssue",
            args={"title": "u", **repo},
        )

    after = await _scrape(tools_api)
    d = lambda name, **labels: _delta(before, after, name, **labels)  # noqa: E731

    route = {"method": "GET", "path": "/api/workflows"}
    item = {"method": "GET", "path": "/api/workflows/{workflow_id}"}
    assert d("http_requests_total", **route, status="200") == 3
    assert d("http_requests_total", **item, status="404") == 2
    assert d("http_requests_total", method="GET", path="/metrics", status="200") == 1  # `before`
    assert d("http_request_duration_seconds_count", **route) == 3
    assert d("http_request_duration_seconds_count", **item) == 2

    haiku = "claude-haiku-4-5"
    assert d("ai_requests_total", model=haiku, category="quick", success="true") == 1
    assert d("ai_requests_total", model=haiku, category="quick", success="false") == 1
    assert d("ai_request_duration_seconds_count", model=haiku) == 2
    assert d("ai_tokens_total", model=haiku, type="input") == 1_000
    assert d("ai_tokens_total", model=haiku, type="output") == 200
    assert d("ai_cost_usd_total", model=haiku) == pytest.approx(0.002)

    gh = {"provider": "github"}
    assert d("mcp_tool_calls_total", **gh, tool="getIssues", success="true") == 1
    assert d("mcp_tool_calls_total", **gh, tool="createIssue", success="true") == 1
    assert d("mcp_tool_calls_total", **gh, tool="createIssue", success="false") == 1
    assert d("mcp_tool_call_duration_seconds_count", **gh, tool="getIssues") == 1
    assert d("mcp_tool_call_duration_seconds_count", **gh, tool="createIssue") == 2
    assert d("tool_cache_requests_total", **gh, tool="getIssues", result="miss") == 1
    assert d("tool_cache_requests_total", **gh, tool="getIssues", result="hit") == 1

    # Nothing else in these families moved: no series was counted twice under other labels.
    assert _moved(before, after, "ai_") == Counter(
        {
            "ai_requests_total": 2,
            "ai_request_duration_seconds_count": 2,
            "ai_tokens_total": 1_200,
            "ai_cost_usd_total": pytest.approx(0.002),
        }
    )
    assert _moved(before, after, "mcp_") == Counter(
        {"mcp_tool_calls_total": 3, "mcp_tool_call_duration_seconds_count": 3}
    )

    for histogram in HISTOGRAMS:
        names = {name for name, _ in after}
        assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= names
