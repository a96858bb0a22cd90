"""`ai` and `tool` steps end to end: the API accepts the execution, a real `taskloom worker`
process calls the (fake) Anthropic API through the organization's connection, then GitHub
with the model's answer; tokens, cost and the usage row are right."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, RecordedRequest
from tests.fakes.tool_apis import FakeGitHub
from tests.workers import StartWorker, create_workflow, execute, wait_for_status


async def _connect(api: httpx.AsyncClient, owner: Account, body: dict[str, Any]) -> None:
    response = await api.post("/api/connections", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text


def _summary(request: RecordedRequest) -> str:
    prompt = request.json["messages"][0]["content"]
    return f"Summary of: {prompt.removeprefix('Summarise: ')}"


async def test_an_ai_step_feeds_a_tool_step_through_a_worker(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    fake_github: FakeGitHub,
) -> None:
    fake_anthropic.reply(_summary, input_tokens=1200, output_tokens=300)
    await _connect(
        api,
        owner,
        {
            "provider": "anthropic",
            "name": "claude",
            "base_url": fake_anthropic.base_url,
            "credentials": {"api_key": fake_anthropic.api_key},
        },
    )
    await _connect(
        api,
        owner,
        {
            "provider": "github",
            "name": "gh",
            "base_url": fake_github.base_url,
            "credentials": {"token": fake_github.token},
            "config": {"owner": "octocat", "repo": "hello-world"},
        },
    )
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "summary",
                "type": "ai",
                "args": {"category": "quick", "prompt": "Summarise: {{ input.text }}"},
            },
            {
                "id": "issue",
                "type": "tool",
                "args": {
                    "connection": "gh",
                    "tool": "createIssue",
                    "args": {"title": "{{ steps.summary.output.text }}"},
                },
            },
        ],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id, {"text": "the outage"})
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done

    assert len(fake_anthropic.requests) == 1
    sent = fake_anthropic.requests[0]
    assert sent.json["model"] == "claude-haiku-4-5"  # category quick → economy tier
    assert sent.headers["x-request-id"]  # the execute request's id travelled to the provider
    issues = fake_github.repos[("octocat", "hello-world")]["items"]
    assert [i["title"] for i in issues] == ["Summary of: the outage"]

    steps = {s["step_id"]: s for s in done["steps"]}
    usage = steps["summary"]["output"]["usage"]
    # Haiku 4.5: $1 per million input, $5 per million output tokens.
    assert usage == {"input_tokens": 1200, "output_tokens": 300, "cost_usd": "0.002700"}
    assert steps["issue"]["output"]["result"]["title"] == "Summary of: the outage"

    async with system_transaction(queue_runtime.database) as db:
        row = (
            await db.execute(
                text(
                    "select user_id, step_id, model, category, input_tokens, output_tokens, "
                    "cost_usd, outcome, reserved_usd, latency_ms is not null "
                    "from ai_usage where execution_id = :e"
                ),
                {"e": execution_id},
            )
        ).one()
    assert tuple(row) == (
        owner.user_id,
        "summary",
        "claude-haiku-4-5",
        "quick",
        1200,
        300,
        Decimal("0.002700"),
        "ok",
        Decimal(0),
        True,
    )
    month = await api.get("/api/ai/usage", headers=owner.headers)
    assert month.status_code == 200
    assert (month.json()["spent_usd"], month.json()["reserved_usd"]) == ("0.002700", "0.000000")


async def test_an_exhausted_budget_fails_the_step_clearly_without_calling_the_model(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
) -> None:
    await _connect(
        api,
        owner,
        {
            "provider": "anthropic",
            "name": "claude",
            "base_url": fake_anthropic.base_url,
            "credentials": {"api_key": fake_anthropic.api_key},
        },
    )
    budget = await api.put(
        "/api/ai/budget", json={"monthly_budget_usd": "0.01"}, headers=owner.headers
    )
    assert budget.status_code == 200, budget.text
    assert budget.json()["budget_usd"] == "0.01"
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "think",
                "type": "ai",
                "args": {"model": "claude-opus-4-5", "prompt": "Hi", "allow_downgrade": False},
            }
        ],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "budget_exhausted"
    assert "monthly AI budget of $0.01 is used up" in done["error"]["message"]
    assert done["steps"][0]["attempts"] == 1  # not retried: more attempts would not help
    assert fake_anthropic.requests == []


async def test_past_the_instance_key_allowance_the_step_fails_until_the_org_brings_its_own_key(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
) -> None:
    """The organization's own budget is unlimited (the default); the instance's key, which any
    self-registered organization would otherwise spend, stops at its monthly allowance."""
    start_worker(
        anthropic_api_key=fake_anthropic.api_key,
        anthropic_base_url=fake_anthropic.base_url,
        ai_instance_key_monthly_budget_usd="0.05",
    )
    fake_anthropic.reply("ok", input_tokens=10_000, output_tokens=8_000)  # $0.01 + $0.04
    workflow_id = await create_workflow(
        api,
        owner,
        [{"id": "ask", "type": "ai", "args": {"model": "claude-haiku-4-5", "prompt": "Hi"}}],
    )
    spent = await wait_for_status(api, owner, await execute(api, owner, workflow_id))
    assert spent["status"] == "succeeded", spent

    refused = await wait_for_status(api, owner, await execute(api, owner, workflow_id))
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "budget_exhausted"
    assert "allowance of $0.05 on this instance's AI key" in refused["error"]["message"]
    assert refused["steps"][0]["attempts"] == 1
    assert len(fake_anthropic.requests) == 1  # nothing more was sent with the instance's key

    with FakeAnthropic(api_key="the-organizations-own-key") as own:
        own.reply("mine")
        await _connect(
            api,
            owner,
            {
                "provider": "anthropic",
                "name": "own",
                "base_url": own.base_url,
                "credentials": {"api_key": own.api_key},
            },
        )
        done = await wait_for_status(api, owner, await execute(api, owner, workflow_id))
        assert done["status"] == "succeeded", done
        assert done["steps"][0]["output"]["text"] == "mine"
        assert len(own.requests) == 1
    assert len(fake_anthropic.requests) == 1
