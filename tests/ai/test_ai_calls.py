"""AI calls through the executor: routing, credentials, accounting, errors, metrics."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import text

from taskloom.ai.executor import AiCall, AiStepError, run_ai
from taskloom.breakers import BREAKERS
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI
from tests.tools.conftest import connect


def _sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def _call(account: Account, **fields: Any) -> AiCall:
    assert account.org_id is not None
    return AiCall(
        org_id=account.org_id,
        user_id=account.user_id,
        execution_id=None,
        step_id="s1",
        **{"prompt": "Hello", **fields},
    )


async def _usage_rows(runtime: Runtime, org_id: uuid.UUID | None) -> list[tuple[Any, ...]]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            text(
                "select model, outcome, input_tokens, output_tokens, cost_usd, downgraded_from "
                "from ai_usage where org_id = :o order by created_at"
            ),
            {"o": org_id},
        )
    return [tuple(r) for r in rows]


async def test_the_organizations_connection_is_used_and_each_call_counted_once(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect(
        tools_api, admin, "anthropic", fake_anthropic.base_url, {"api_key": fake_anthropic.api_key}
    )
    fake_anthropic.reply("Bonjour", input_tokens=2_000_000, output_tokens=100_000)
    model = "claude-sonnet-4-5"
    before = {
        "ok": _sample("ai_requests_total", model=model, category="writing", success="true"),
        "in": _sample("ai_tokens_total", model=model, type="input"),
        "out": _sample("ai_tokens_total", model=model, type="output"),
        "cost": _sample("ai_cost_usd_total", model=model),
        "n": _sample("ai_request_duration_seconds_count", model=model),
    }
    output = await run_ai(tools_runtime, _call(admin, category="writing", system="Be brief"))
    assert output["text"] == "Bonjour"
    assert output["usage"] == {
        "input_tokens": 2_000_000,
        "output_tokens": 100_000,
        "cost_usd": "7.500000",  # 2 M x $3 + 0.1 M x $15
    }
    sent = fake_anthropic.requests[0].json
    assert (sent["model"], sent["system"], sent["max_tokens"]) == (model, "Be brief", 1024)
    assert _sample("ai_requests_total", model=model, category="writing", success="true") == (
        before["ok"] + 1
    )
    assert _sample("ai_tokens_total", model=model, type="input") == before["in"] + 2_000_000
    assert _sample("ai_tokens_total", model=model, type="output") == before["out"] + 100_000
    assert _sample("ai_cost_usd_total", model=model) == pytest.approx(before["cost"] + 7.5)
    assert _sample("ai_request_duration_seconds_count", model=model) == before["n"] + 1
    assert await _usage_rows(tools_runtime, admin.org_id) == [
        (model, "ok", 2_000_000, 100_000, Decimal("7.500000"), None)
    ]


async def test_a_provider_failure_is_classified_counted_and_costs_nothing(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect(
        tools_api, admin, "anthropic", fake_anthropic.base_url, {"api_key": fake_anthropic.api_key}
    )
    fake_anthropic.fail_next(1, 529)
    failed = _sample(
        "ai_requests_total", model="claude-haiku-4-5", category="quick", success="false"
    )
    with pytest.raises(AiStepError) as overloaded:
        await run_ai(tools_runtime, _call(admin, category="quick"))
    assert (overloaded.value.code, overloaded.value.retryable) == ("ai_overloaded", True)
    fake_anthropic.fail_next(1, 400, message="prompt is too long")
    with pytest.raises(AiStepError) as bad:
        await run_ai(tools_runtime, _call(admin, category="quick"))
    assert (bad.value.code, bad.value.retryable) == ("ai_bad_request", False)
    assert "prompt is too long" in bad.value.message
    assert (
        _sample("ai_requests_total", model="claude-haiku-4-5", category="quick", success="false")
        == failed + 2
    )
    rows = await _usage_rows(tools_runtime, admin.org_id)
    assert [(r[1], r[4]) for r in rows] == [
        ("ai_overloaded", Decimal(0)),
        ("ai_bad_request", Decimal(0)),
    ]
    summary = await tools_api.get("/api/ai/usage", headers=admin.headers)
    assert (summary.json()["spent_usd"], summary.json()["reserved_usd"]) == ("0.000000", "0.000000")


async def test_a_low_budget_routes_a_category_to_the_cheaper_tier(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect(
        tools_api, admin, "anthropic", fake_anthropic.base_url, {"api_key": fake_anthropic.api_key}
    )
    response = await tools_api.put(
        "/api/ai/budget", json={"monthly_budget_usd": "1.00"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    fake_anthropic.reply("ok", input_tokens=20_000, output_tokens=30_000)  # $0.85 on Opus
    first = await run_ai(tools_runtime, _call(admin, category="reasoning"))
    assert (first["model"], first["downgraded_from"]) == ("claude-opus-5", None)
    # $0.15 left, under 20 %: one tier down (Sonnet's worst case, $0.0154, fits).
    second = await run_ai(tools_runtime, _call(admin, category="reasoning"))
    assert (second["model"], second["downgraded_from"]) == ("claude-sonnet-4-5", "claude-opus-5")
    assert fake_anthropic.requests[-1].json["model"] == "claude-sonnet-4-5"
    rows = await _usage_rows(tools_runtime, admin.org_id)
    assert rows[-1][5] == "claude-opus-5"


async def test_without_any_key_the_call_fails_clearly(
    tools_runtime: Runtime, admin: Account
) -> None:
    with pytest.raises(AiStepError) as missing:
        await run_ai(tools_runtime, _call(admin, model="gpt-4.1-mini"))
    assert missing.value.code == "no_ai_credentials"
    assert "OPENAI_API_KEY" in missing.value.message
    with pytest.raises(AiStepError) as unknown:
        await run_ai(tools_runtime, _call(admin, model="gpt-7"))
    assert unknown.value.code == "unknown_model"


async def test_the_instance_key_serves_organizations_without_their_own(
    tools_runtime: Runtime, admin: Account, fake_openai: FakeOpenAI
) -> None:
    runtime = Runtime(
        **{
            **tools_runtime.__dict__,
            "settings": tools_runtime.settings.model_copy(
                update={
                    "openai_api_key": SecretStr(fake_openai.api_key),
                    "openai_base_url": fake_openai.base_url,
                }
            ),
        }
    )
    fake_openai.reply('{"answer": 42}', input_tokens=100, output_tokens=10)
    output = await run_ai(
        runtime,
        _call(
            admin,
            category="analysis",
            provider="openai",
            json_output=True,
            json_schema={"type": "object", "required": ["answer"]},
        ),
    )
    assert output["json"] == {"answer": 42}
    assert output["model"] == "gpt-4.1-mini"
    sent = fake_openai.requests[0]
    assert sent.json["response_format"] == {"type": "json_object"}
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"

    fake_openai.reply('{"other": 1}')
    with pytest.raises(AiStepError) as mismatch:
        await run_ai(
            runtime,
            _call(
                admin,
                category="analysis",
                provider="openai",
                json_output=True,
                json_schema={"type": "object", "required": ["answer"]},
            ),
        )
    assert (mismatch.value.code, mismatch.value.retryable) == ("invalid_json_output", True)


def _with_instance_key(runtime: Runtime, fake: FakeAnthropic, allowance: str) -> Runtime:
    """The runtime of an instance whose own Anthropic key reaches `fake`."""
    settings = runtime.settings.model_copy(
        update={
            "anthropic_api_key": SecretStr(fake.api_key),
            "anthropic_base_url": fake.base_url,
            "ai_instance_key_monthly_budget_usd": Decimal(allowance),
        }
    )
    return Runtime(**{**runtime.__dict__, "settings": settings})


async def test_one_organizations_failures_on_the_instance_key_pause_only_its_own_calls(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    """A tenant that makes its calls on the shared instance key fail (prompts built to time out,
    a flood the provider answers 429) opens the breaker of its own calls, not every tenant's."""
    runtime = _with_instance_key(tools_runtime, fake_anthropic, "1000")
    other = await register(tools_api, label="other-tenant", organization_name="Other tenant")
    threshold = runtime.settings.breaker_failure_threshold
    try:
        fake_anthropic.fail_next(threshold, 529)
        for _ in range(threshold):
            with pytest.raises(AiStepError) as failed:
                await run_ai(runtime, _call(admin, category="quick"))
            assert failed.value.code == "ai_overloaded"
        sent = len(fake_anthropic.requests)
        with pytest.raises(AiStepError) as paused:
            await run_ai(runtime, _call(admin, category="quick"))
        assert (paused.value.code, paused.value.retryable) == ("circuit_open", True)
        assert len(fake_anthropic.requests) == sent  # the paused call never left

        fake_anthropic.reply("still served", input_tokens=10, output_tokens=5)
        answer = await run_ai(runtime, _call(other, category="quick"))
        assert answer["text"] == "still served"
        assert len(fake_anthropic.requests) == sent + 1
    finally:
        for breaker in BREAKERS.all():
            if breaker.name.startswith("ai:instance:anthropic"):
                BREAKERS.remove(breaker.name)


async def test_past_its_instance_key_allowance_an_organization_calls_only_with_its_own_key(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    runtime = _with_instance_key(tools_runtime, fake_anthropic, "0.05")
    # Its own budget is unlimited (the default); the instance's key still stops at $0.05.
    fake_anthropic.reply("ok", input_tokens=10_000, output_tokens=8_000)  # $0.01 + $0.04
    first = await run_ai(runtime, _call(admin, model="claude-haiku-4-5"))
    assert first["usage"]["cost_usd"] == "0.050000"
    with pytest.raises(AiStepError) as exhausted:
        await run_ai(runtime, _call(admin, model="claude-haiku-4-5"))
    assert (exhausted.value.code, exhausted.value.retryable) == ("budget_exhausted", False)
    assert "allowance of $0.05 on this instance's AI key is used up" in exhausted.value.message
    assert exhausted.value.details["limit"] == "instance_key"
    assert len(fake_anthropic.requests) == 1  # the refused call never reached the provider

    with FakeAnthropic(api_key="the-organizations-own-key") as own:
        await connect(tools_api, admin, "anthropic", own.base_url, {"api_key": own.api_key})
        own.reply("mine", input_tokens=10_000, output_tokens=8_000)
        for _ in range(2):  # past the instance key's allowance: its own key is not bound by it
            answer = await run_ai(runtime, _call(admin, model="claude-haiku-4-5"))
            assert answer["text"] == "mine"
        assert len(own.requests) == 2
    assert len(fake_anthropic.requests) == 1
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            text(
                "select outcome, instance_key, cost_usd from ai_usage where org_id = :o "
                "order by created_at"
            ),
            {"o": admin.org_id},
        )
        assert [tuple(r) for r in rows] == [
            ("ok", True, Decimal("0.050000")),
            ("ok", False, Decimal("0.050000")),
            ("ok", False, Decimal("0.050000")),
        ]


async def test_an_instance_key_allowance_of_zero_sends_nothing_with_the_instance_key(
    tools_runtime: Runtime, admin: Account, fake_anthropic: FakeAnthropic
) -> None:
    runtime = _with_instance_key(tools_runtime, fake_anthropic, "0")
    with pytest.raises(AiStepError) as refused:
        await run_ai(runtime, _call(admin, category="quick"))
    assert refused.value.code == "budget_exhausted"
    assert "add an anthropic or openai connection" in refused.value.message
    assert fake_anthropic.requests == []


async def test_calls_reuse_the_keys_connection_and_organizations_never_share_one(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    """The outbound pool (taskloom/outbound_pool.py): an organization's calls go over one
    kept-alive connection; another organization on the same instance key gets its own."""
    runtime = _with_instance_key(tools_runtime, fake_anthropic, "100")
    other = await register(tools_api, label="ai-reuse", organization_name="AI Reuse Org")
    fake_anthropic.reply("Hi")
    for _ in range(3):
        await run_ai(runtime, _call(admin, provider="anthropic"))
    assert fake_anthropic.connections == 1
    for _ in range(2):
        await run_ai(runtime, _call(other, provider="anthropic"))
    assert fake_anthropic.connections == 2
    assert len(fake_anthropic.requests) == 5
