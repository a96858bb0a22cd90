"""The Anthropic and OpenAI providers, with the real SDKs talking HTTP to fake APIs
(tests/fakes/ai_apis.py): the request each sends, what each reads back, and how each failure
becomes an `AiProviderError` once the SDK's own retries are spent."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

import taskloom.ai.providers as providers
from taskloom.ai.providers import JSON_ONLY_INSTRUCTION
from taskloom.ai.providers.anthropic import AnthropicProvider
from taskloom.ai.providers.base import AiProvider, AiProviderError, AiRequest, Message
from taskloom.ai.providers.openai import OpenAIProvider
from taskloom.net import TargetNotAllowed
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI, RecordedRequest, Reply

# The fixtures that `api`, `anthropic_api` and `openai_api` ask for by name.

CONVERSATION = [
    Message("user", "What is 2+2?"),
    Message("assistant", "4."),
    Message("user", "And 3+3?"),
]
REQUEST = AiRequest(
    model="model-x",
    messages=CONVERSATION,
    max_tokens=256,
    system="Be brief.",
    temperature=0.2,
    request_id="req-test-1",
)
WIRE_MESSAGES = [{"role": m.role, "content": m.content} for m in CONVERSATION]
SECRET_KEY = "sk-wrong-0123456789abcdef"


@pytest.fixture
async def http_client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


@dataclass
class Api:
    """One provider and the fake it talks to."""

    fake: FakeAnthropic | FakeOpenAI
    provider_class: type[AnthropicProvider] | type[OpenAIProvider]
    http_client: httpx2.AsyncClient

    def provider(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 5.0,
        max_retries: int = 0,
    ) -> AiProvider:
        return self.provider_class(
            api_key=api_key or self.fake.api_key,
            base_url=base_url or self.fake.base_url,
            http_client=self.http_client,
            timeout=timeout,
            max_retries=max_retries,
        )


@pytest.fixture(params=["anthropic", "openai"])
def api(request: pytest.FixtureRequest, http_client: httpx2.AsyncClient) -> Api:
    fake = request.getfixturevalue(f"fake_{request.param}")
    provider_class = AnthropicProvider if request.param == "anthropic" else OpenAIProvider
    return Api(fake=fake, provider_class=provider_class, http_client=http_client)


@pytest.fixture
def anthropic_api(request: pytest.FixtureRequest, http_client: httpx2.AsyncClient) -> Api:
    fake = request.getfixturevalue("fake_anthropic")
    return Api(fake=fake, provider_class=AnthropicProvider, http_client=http_client)


@pytest.fixture
def openai_api(request: pytest.FixtureRequest, http_client: httpx2.AsyncClient) -> Api:
    fake = request.getfixturevalue("fake_openai")
    return Api(fake=fake, provider_class=OpenAIProvider, http_client=http_client)


async def fails(provider: AiProvider, request: AiRequest = REQUEST) -> AiProviderError:
    with pytest.raises(AiProviderError) as caught:
        await provider.complete(request)
    return caught.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---- Anthropic: request shape and answer ----


async def test_anthropic_sends_one_messages_request_with_system_on_top_and_no_temperature(
    anthropic_api: Api,
) -> None:
    await anthropic_api.provider().complete(REQUEST)

    [sent] = anthropic_api.fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    # Exactly this body: API version 2026-10-21 answers 400 to temperature, top_p and top_k.
    assert sent.json == {
        "model": "model-x",
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": WIRE_MESSAGES,
    }
    assert sent.headers["authorization"] == "Bearer test-key"  # SDK 2.x: not x-api-key
    assert sent.headers["anthropic-version"] == "2026-10-21"
    assert sent.headers["x-request-id"] == "req-test-1"


async def test_anthropic_sends_no_system_field_and_no_request_id_when_the_request_has_none(
    anthropic_api: Api,
) -> None:
    await anthropic_api.provider().complete(
        AiRequest(model="model-x", messages=CONVERSATION[:1], max_tokens=16)
    )

    [sent] = anthropic_api.fake.requests
    assert "system" not in sent.json
    assert "x-request-id" not in sent.headers


async def test_anthropic_answer_is_the_text_blocks_joined_with_tokens_model_and_stop_reason(
    anthropic_api: Api,
) -> None:
    blocks = [
        {"type": "thinking", "thinking": "2+2 is 4, 3+3 is 6", "signature": "sig"},
        {"type": "text", "text": "It is "},
        {"type": "text", "text": "6."},
    ]
    anthropic_api.fake.reply(
        lambda _req: Reply(
            "",
            input_tokens=30,
            output_tokens=7,
            stop_reason="max_tokens",
            model="model-x-20990101",
            content_blocks=blocks,
        )
    )

    answer = await anthropic_api.provider().complete(REQUEST)

    assert answer.text == "It is 6."
    assert (answer.input_tokens, answer.output_tokens) == (30, 7)
    assert answer.model == "model-x-20990101"
    assert answer.stop_reason == "max_tokens"


async def test_anthropic_counts_cache_writes_and_cache_reads_as_input_tokens(
    anthropic_api: Api,
) -> None:
    anthropic_api.fake.reply(
        "ok",
        input_tokens=12,
        output_tokens=3,
        cache_creation_input_tokens=100,
        cache_read_input_tokens=1000,
    )

    answer = await anthropic_api.provider().complete(REQUEST)

    assert (answer.input_tokens, answer.output_tokens) == (1112, 3)


async def test_anthropic_json_output_ends_the_system_prompt_with_the_json_only_instruction(
    anthropic_api: Api,
) -> None:
    provider = anthropic_api.provider()
    await provider.complete(
        AiRequest(model="model-x", messages=CONVERSATION, max_tokens=64, json_output=True)
    )
    await provider.complete(
        AiRequest(
            model="model-x",
            messages=CONVERSATION,
            max_tokens=64,
            system="Be brief.",
            json_output=True,
        )
    )

    without_system, with_system = anthropic_api.fake.requests
    assert without_system.json["system"] == JSON_ONLY_INSTRUCTION
    assert with_system.json["system"] == f"Be brief.\n\n{JSON_ONLY_INSTRUCTION}"
    assert "response_format" not in with_system.json


async def test_anthropic_529_overloaded_is_a_retryable_ai_overloaded_error(
    anthropic_api: Api,
) -> None:
    anthropic_api.fake.fail_next(2, 529, message="Overloaded")

    error = await fails(anthropic_api.provider(max_retries=1))

    assert (error.code, error.retryable, error.status) == ("ai_overloaded", True, 529)
    assert error.message == "anthropic answered 529: Overloaded"
    assert len(anthropic_api.fake.requests) == 2


async def test_anthropic_a_retry_after_longer_than_the_call_deadline_ends_in_ai_timeout(
    anthropic_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anthropic's SDK would wait the full hour; the call's deadline stops it.
    monkeypatch.setattr(providers, "RETRY_WAIT_ALLOWANCE_SECONDS", 0.2)
    anthropic_api.fake.fail_next(1, 429, headers={"retry-after": "3600"})

    started = time.monotonic()
    error = await fails(anthropic_api.provider(timeout=0.3, max_retries=1))

    assert time.monotonic() - started < 3
    assert (error.code, error.retryable) == ("ai_timeout", True)
    assert "retries included" in error.message


async def test_anthropic_ignores_keys_urls_and_headers_from_the_environment(
    anthropic_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "env-token")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "Authorization: Bearer env-key\nX-From-Env: 1")

    await anthropic_api.provider().complete(REQUEST)

    [sent] = anthropic_api.fake.requests
    assert sent.headers["authorization"] == "Bearer test-key"
    assert "x-from-env" not in sent.headers


# ---- OpenAI: request shape and answer ----


async def test_openai_sends_system_first_and_max_tokens_to_a_compatible_server(
    openai_api: Api,
) -> None:
    await openai_api.provider().complete(REQUEST)

    [sent] = openai_api.fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.json == {
        "model": "model-x",
        "messages": [{"role": "system", "content": "Be brief."}, *WIRE_MESSAGES],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.headers["x-request-id"] == "req-test-1"
    assert "openai-organization" not in sent.headers


async def test_openai_sends_no_system_message_and_no_temperature_when_the_request_has_none(
    openai_api: Api,
) -> None:
    await openai_api.provider().complete(
        AiRequest(model="model-x", messages=CONVERSATION[:1], max_tokens=16)
    )

    [sent] = openai_api.fake.requests
    assert sent.json == {"model": "model-x", "messages": WIRE_MESSAGES[:1], "max_tokens": 16}
    assert "x-request-id" not in sent.headers


async def test_openai_sends_max_completion_tokens_when_told_to(openai_api: Api) -> None:
    provider = OpenAIProvider(
        api_key=openai_api.fake.api_key,
        base_url=openai_api.fake.base_url,
        http_client=openai_api.http_client,
        timeout=5.0,
        max_retries=0,
        output_limit_param="max_completion_tokens",
    )

    await provider.complete(REQUEST)

    [sent] = openai_api.fake.requests
    assert sent.json["max_completion_tokens"] == 256
    assert "max_tokens" not in sent.json


async def test_openai_sends_max_completion_tokens_to_api_openai_com_by_default() -> None:
    # The one test without a fake server: nothing here may reach the real API.
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "model-x",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as client:
        provider = OpenAIProvider(
            api_key="sk-test", base_url=None, http_client=client, timeout=5.0, max_retries=0
        )
        await provider.complete(REQUEST)

    [sent] = seen
    assert str(sent.url) == "https://api.openai.com/v1/chat/completions"
    body: dict[str, Any] = json.loads(sent.content)
    assert body["max_completion_tokens"] == 256
    assert "max_tokens" not in body


async def test_openai_answer_text_tokens_model_and_finish_reason(openai_api: Api) -> None:
    openai_api.fake.reply(
        "It is 6.", input_tokens=30, output_tokens=7, stop_reason="length", model="model-x-0001"
    )

    answer = await openai_api.provider().complete(REQUEST)

    assert answer.text == "It is 6."
    assert (answer.input_tokens, answer.output_tokens) == (30, 7)
    assert answer.model == "model-x-0001"
    assert answer.stop_reason == "length"


async def test_openai_json_output_asks_for_a_json_object_and_says_json_in_the_system_prompt(
    openai_api: Api,
) -> None:
    # The fake, like OpenAI, answers 400 in JSON mode unless a message mentions JSON.
    await openai_api.provider().complete(
        AiRequest(model="model-x", messages=CONVERSATION, max_tokens=64, json_output=True)
    )

    [sent] = openai_api.fake.requests
    assert sent.json["response_format"] == {"type": "json_object"}
    assert sent.json["messages"][0] == {"role": "system", "content": JSON_ONLY_INSTRUCTION}
    assert sent.json["messages"][1:] == WIRE_MESSAGES


async def test_openai_does_not_retry_when_asked_to_wait_more_than_two_minutes(
    openai_api: Api,
) -> None:
    openai_api.fake.fail_next(1, 429, headers={"retry-after": "600"})

    error = await fails(openai_api.provider(max_retries=2))

    assert (error.code, error.retryable) == ("ai_rate_limited", True)
    assert len(openai_api.fake.requests) == 1


async def test_openai_ignores_keys_urls_organizations_and_headers_from_the_environment(
    openai_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer env-key\nX-From-Env: 1")

    await openai_api.provider().complete(REQUEST)

    [sent] = openai_api.fake.requests
    assert sent.headers["authorization"] == "Bearer test-key"
    for name in ("openai-organization", "openai-project", "x-from-env"):
        assert name not in sent.headers


# ---- both providers ----


async def test_a_response_without_usage_counts_zero_tokens(api: Api) -> None:
    api.fake.reply("ok", include_usage=False)

    answer = await api.provider().complete(REQUEST)

    assert (answer.text, answer.input_tokens, answer.output_tokens) == ("ok", 0, 0)


async def test_the_fake_can_compute_the_answer_from_the_request(api: Api) -> None:
    def echo(request: RecordedRequest) -> str:
        return str(request.json["messages"][-1]["content"])

    api.fake.reply(echo)

    answer = await api.provider().complete(REQUEST)

    assert answer.text == "And 3+3?"


async def test_a_429_is_retried_by_the_sdk_and_the_second_answer_wins(api: Api) -> None:
    api.fake.fail_next(1, 429)
    api.fake.reply("after the wait", input_tokens=4, output_tokens=2)

    answer = await api.provider(max_retries=2).complete(REQUEST)

    assert answer.text == "after the wait"
    assert len(api.fake.requests) == 2
    retry_counts = [r.headers["x-stainless-retry-count"] for r in api.fake.requests]
    assert retry_counts == ["0", "1"]


async def test_a_rate_limit_that_outlasts_the_retries_is_a_retryable_ai_rate_limited(
    api: Api,
) -> None:
    api.fake.fail_next(3, 429, message="Number of requests has exceeded your rate limit")

    error = await fails(api.provider(max_retries=2))

    assert (error.code, error.retryable, error.status) == ("ai_rate_limited", True, 429)
    assert error.message.endswith(": Number of requests has exceeded your rate limit")
    assert len(api.fake.requests) == 3


async def test_a_server_error_every_time_is_retryable_after_max_retries_plus_one_requests(
    api: Api,
) -> None:
    api.fake.fail_next(10, 500, message="Internal server error")

    error = await fails(api.provider(max_retries=2))

    assert (error.code, error.retryable, error.status) == ("ai_server_error", True, 500)
    assert len(api.fake.requests) == 3


async def test_a_wrong_key_is_a_non_retryable_auth_failure_whose_message_hides_the_key(
    api: Api,
) -> None:
    # The fake quotes the key it was given in its 401 message; the provider must not.
    error = await fails(api.provider(api_key=SECRET_KEY, max_retries=2))

    assert (error.code, error.retryable, error.status) == ("ai_auth_failed", False, 401)
    assert SECRET_KEY not in error.message
    assert SECRET_KEY not in str(error)
    assert "[redacted]" in error.message
    assert error.__cause__ is None  # the SDK's exception, which repeats the body, is not chained
    assert len(api.fake.requests) == 1  # never retried


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "ai_bad_request"), (404, "ai_not_found"), (422, "ai_bad_request")],
)
async def test_a_client_error_is_not_retried(api: Api, status: int, code: str) -> None:
    api.fake.fail_next(1, status, message="model: model-x does not exist")

    error = await fails(api.provider(max_retries=2))

    assert (error.code, error.retryable, error.status) == (code, False, status)
    assert len(api.fake.requests) == 1


async def test_the_provider_error_message_is_trimmed_to_300_characters(api: Api) -> None:
    api.fake.fail_next(1, 400, message="x" * 1000)

    error = await fails(api.provider())

    quoted = error.message.split(": ", 1)[1]
    assert len(quoted) == 300
    assert quoted.endswith("…")


async def test_an_answer_slower_than_the_timeout_is_a_retryable_ai_timeout(api: Api) -> None:
    api.fake.delay_seconds = 2.0

    started = time.monotonic()
    error = await fails(api.provider(timeout=0.2, max_retries=0))

    assert time.monotonic() - started < 1.5
    assert (error.code, error.retryable, error.status) == ("ai_timeout", True, None)


async def test_a_port_where_nothing_listens_is_a_retryable_ai_unreachable(api: Api) -> None:
    base_url = api.fake.base_url.replace(str(api.fake.port), str(free_port()))

    error = await fails(api.provider(base_url=base_url, max_retries=0))

    assert (error.code, error.retryable, error.status) == ("ai_unreachable", True, None)
    assert "127.0.0.1" in error.message


class RefusingTransport(httpx2.AsyncBaseTransport):
    """What the outbound address guard (taskloom.net) does for a private address."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise TargetNotAllowed(request.url.host, "10.1.2.3", "private")


async def test_a_host_the_address_policy_refuses_is_a_non_retryable_ai_target_not_allowed(
    api: Api,
) -> None:
    async with httpx2.AsyncClient(transport=RefusingTransport()) as client:
        provider = api.provider_class(
            api_key="k", base_url="http://10.1.2.3/v1", http_client=client, timeout=1, max_retries=0
        )
        error = await fails(provider)

    assert (error.code, error.retryable, error.status) == ("ai_target_not_allowed", False, None)
    assert error.message.startswith("refusing to connect to 10.1.2.3")


async def test_an_empty_api_key_is_refused_at_construction(api: Api) -> None:
    with pytest.raises(ValueError, match="API key"):
        api.provider_class(
            api_key="", base_url=api.fake.base_url, http_client=None, timeout=1, max_retries=0
        )
