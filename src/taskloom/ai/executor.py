"""One AI call, the same way for every provider:

1. route: the step names a model, or a category that the catalog maps to its provider's tier;
2. credentials: the connection the step names, else the organization's own connection for that
   provider (oldest enabled), else the instance's key (ANTHROPIC_API_KEY / OPENAI_API_KEY);
3. budget: reserve the worst-case cost (every input byte a token, plus max_tokens of output),
   downgrading to a cheaper tier when little budget is left (`ai/budget.py`); a call with the
   instance's key must also fit in the organization's allowance on it
   (AI_INSTANCE_KEY_MONTHLY_BUDGET_USD);
4. the call, behind a circuit breaker per credential (`ai:<connection id>`), or per provider and
   organization for the instance's key (`ai:instance:<provider>:<org id>`: one tenant's failing
   calls, say deliberate timeouts, must not pause every tenant's AI), with the SDK's bounded
   retries and a per-call timeout;
5. settle the actual cost, write the usage row, count the call once in the metrics.

`run_ai` makes the `ai` step's one completion; `run_turn` makes one turn of a conversation
with tools (the `agent` step's loop, executions/steps/agent.py), bound also by the step's own
`max_cost_usd`. Both stream (the providers' streaming APIs) when given `on_text`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import httpx2
import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import select

from taskloom import safe_jsonschema
from taskloom.ai import budget
from taskloom.ai.budget import BudgetExhausted, Candidate, Reservation
from taskloom.ai.catalog import Catalog, CatalogError, ModelPrice, load_catalog
from taskloom.ai.providers.base import (
    AiProvider,
    AiProviderError,
    AiRequest,
    AiResponse,
    Message,
    OnText,
    ToolCall,
    ToolSpec,
)
from taskloom.breakers import BREAKERS, CircuitOpen
from taskloom.db.tenancy import tenant_transaction
from taskloom.observability import tracing
from taskloom.observability.metrics import AI_COST, AI_DURATION, AI_REQUESTS, AI_TOKENS
from taskloom.observability.request_id import current_request_id
from taskloom.outbound_pool import PoolKey, fingerprint
from taskloom.runtime import Runtime
from taskloom.tools.base import Connection, ToolError
from taskloom.tools.executor import usable_connection
from taskloom.tools.models import ToolConnection
from taskloom.tools.service import find_connection

log = structlog.get_logger("taskloom.ai")

# Messages are framed by a few tokens each (role markers); generous, so the estimate stays an
# upper bound.
_FRAMING_TOKENS = 16
_BREAKER_STATUSES = frozenset({401, 403})


class AiStepError(Exception):
    """Why an AI call did not produce an answer; `retryable` decides whether the queue retries."""

    def __init__(
        self, message: str, *, code: str, retryable: bool = False, details: Any = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.retryable, self.details = message, code, retryable, details


@dataclass(frozen=True)
class AiCall:
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    execution_id: uuid.UUID | None
    step_id: str | None
    prompt: str
    system: str | None = None
    category: str | None = None
    model: str | None = None
    provider: str | None = None
    connection: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    json_output: bool = False
    json_schema: dict[str, Any] | None = None
    allow_downgrade: bool = True
    on_text: OnText | None = None  # stream, and hand the text deltas here


@dataclass(frozen=True)
class Turn:
    """What one model turn of a conversation answered, and what it cost."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str | None
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    latency_ms: int


@dataclass(frozen=True)
class _Credential:
    breaker: str
    api_key: str
    base_url: str | None
    guarded: bool  # the base URL came from a tenant: apply the outbound address guard
    instance_key: bool  # the operator's key, not the organization's: its allowance applies


def instance_breaker(provider: str, org_id: uuid.UUID) -> str:
    """The breaker of an organization's calls with the instance's key for `provider`: each
    organization's own, so that what one sends (prompts that time out, floods the provider
    answers 429) opens the breaker for it alone. A provider that is really down opens each
    calling organization's after BREAKER_FAILURE_THRESHOLD of its calls."""
    return f"ai:instance:{provider}:{org_id}"


def worst_case_input_tokens(call: AiCall) -> int:
    """An upper bound of the input tokens: byte-level tokenizers never make a token of less
    than one byte, so the UTF-8 length bounds the count."""
    text = (call.system or "") + call.prompt
    return len(text.encode()) + 2 * _FRAMING_TOKENS


def _conversation_tokens(call: AiCall, messages: list[Message], tools: tuple[ToolSpec, ...]) -> int:
    """The same bound for a conversation with tools: every message, call, result and tool
    schema as JSON (more bytes than the API's own encoding), each message framed."""
    size = len((call.system or "").encode())
    for message in messages:
        size += len(message.content.encode())
        size += sum(len(json.dumps(c.arguments).encode()) + len(c.name) for c in message.tool_calls)
        size += sum(len(r.content.encode()) + len(r.tool_call_id) for r in message.tool_results)
    size += sum(
        len(json.dumps(t.input_schema).encode()) + len(t.name) + len(t.description.encode())
        for t in tools
    )
    framed = len(messages) + sum(len(m.tool_calls) + len(m.tool_results) for m in messages)
    return size + (framed + len(tools) + 2) * _FRAMING_TOKENS


def _route(catalog: Catalog, call: AiCall) -> tuple[ModelPrice, str | None]:
    try:
        if call.model is not None:
            return catalog.model(call.model), call.category
        category = call.category or catalog.default_category
        return catalog.for_category(category, call.provider), category
    except CatalogError as error:
        raise AiStepError(str(error), code="unknown_model") from None


def _candidates(
    catalog: Catalog,
    call: AiCall,
    preferred: ModelPrice,
    default_max_tokens: int,
    input_tokens: int | None = None,
) -> list[Candidate]:
    chain = [preferred]
    while call.allow_downgrade and (cheaper := catalog.cheaper(chain[-1])) is not None:
        chain.append(cheaper)
    if input_tokens is None:
        input_tokens = worst_case_input_tokens(call)
    return [
        Candidate(
            model, model.cost(input_tokens, _max_tokens(call, model, default=default_max_tokens))
        )
        for model in chain
    ]


def _max_tokens(call: AiCall, model: ModelPrice, *, default: int) -> int:
    return min(call.max_tokens or default, model.max_output_tokens)


async def _credential(runtime: Runtime, call: AiCall, provider: str) -> _Credential:
    settings = runtime.settings
    connection: Connection | None = None
    # One transaction: the named connection, else the organization's default for the provider.
    async with tenant_transaction(runtime.database, org_id=call.org_id, user_id=None) as db:
        if call.connection is not None:
            row = await find_connection(
                db=db, org_id=call.org_id, ref=call.connection, provider=provider
            )
        else:
            row = await db.scalar(
                select(ToolConnection)
                .where(
                    ToolConnection.org_id == call.org_id,
                    ToolConnection.provider == provider,
                    ToolConnection.enabled.is_(True),
                )
                .order_by(ToolConnection.created_at, ToolConnection.id)
                .limit(1)
            )
    try:
        if call.connection is not None:
            connection = usable_connection(runtime, row, ref=call.connection, provider=provider)
        elif row is not None:
            connection = usable_connection(runtime, row, ref=str(row.id), provider=provider)
    except ToolError as error:
        raise AiStepError(error.message, code=error.code) from None
    if connection is not None:
        return _Credential(
            breaker=f"ai:{connection.id}",
            api_key=str(connection.credentials["api_key"]),
            base_url=connection.base_url,
            guarded=True,
            instance_key=False,
        )
    key = settings.anthropic_api_key if provider == "anthropic" else settings.openai_api_key
    if key is None or not key.get_secret_value():
        raise AiStepError(
            f"no {provider} API key: add an {provider} connection to the organization, or set "
            f"{provider.upper()}_API_KEY on the instance",
            code="no_ai_credentials",
        )
    base_url = settings.anthropic_base_url if provider == "anthropic" else settings.openai_base_url
    return _Credential(
        breaker=instance_breaker(provider, call.org_id),
        api_key=key.get_secret_value(),
        base_url=base_url,
        guarded=False,
        instance_key=True,
    )


@asynccontextmanager
async def _provider(
    runtime: Runtime, org_id: uuid.UUID, provider: str, credential: _Credential
) -> AsyncIterator[AiProvider]:
    """The provider's SDK on a client of this call's own, over the pooled transport of this
    organization's key (an instance key too is pooled per organization)."""
    settings = runtime.settings
    key = PoolKey(
        org=str(org_id),
        kind="ai",
        owner=credential.breaker.removeprefix("ai:"),  # the connection id, or instance:<provider>
        fingerprint=fingerprint(provider, credential.base_url, credential.api_key),
        flavor="httpx2",
        guarded=credential.guarded,
        policy=settings.outbound_allowed_hosts,
    )
    async with (
        runtime.outbound.transport(key) as transport,
        httpx2.AsyncClient(transport=transport, trust_env=False) as http,
    ):
        yield (await _provider_class(provider))(
            api_key=credential.api_key,
            base_url=credential.base_url,
            http_client=http,
            timeout=settings.ai_timeout_seconds,
            max_retries=settings.ai_max_retries,
        )


async def _complete(
    runtime: Runtime,
    org_id: uuid.UUID,
    provider_name: str,
    credential: _Credential,
    request: AiRequest,
) -> AiResponse:
    """The provider's answer, in a `chat <model>` span with the OpenTelemetry GenAI attributes
    (provider, models, token counts; never the prompt, the answer or the key), parent of the
    call's HTTP spans."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider_name,
        "gen_ai.provider.name": provider_name,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_tokens,
    }
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    span_cm = tracing.tracer().start_as_current_span(
        f"chat {request.model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # a provider's message might quote the input
        set_status_on_exception=False,
    )
    with span_cm as span:
        try:
            async with _provider(runtime, org_id, provider_name, credential) as provider:
                response = await provider.complete(request)
        except Exception as error:
            code = error.code if isinstance(error, AiProviderError) else type(error).__qualname__
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, code))
            raise
        span.set_attributes(
            {
                "gen_ai.response.model": response.model,
                "gen_ai.usage.input_tokens": response.input_tokens,
                "gen_ai.usage.output_tokens": response.output_tokens,
            }
        )
        if response.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", (response.stop_reason,))
        return response


_PROVIDER_CLASSES: dict[str, Callable[..., AiProvider]] = {}


async def _provider_class(provider: str) -> Callable[..., AiProvider]:
    """Imported on first use: the two SDKs take seconds of CPU to import, which every worker
    start and every API process would pay even when nobody calls a model. The first import runs
    in a thread, so the event loop goes on meanwhile (a loop blocked for seconds misses the
    queue's lock renewals, and the job would be taken for stalled)."""
    found = _PROVIDER_CLASSES.get(provider)
    if found is None:
        # Not `sys.modules`: while one call imports, another would find the module there
        # half-initialized. A second importer waits on the import lock, in its own thread.
        module = "anthropic" if provider == "anthropic" else "openai"
        loaded = await asyncio.to_thread(importlib.import_module, f"taskloom.ai.providers.{module}")
        found = _PROVIDER_CLASSES[provider] = cast(
            "Callable[..., AiProvider]",
            loaded.AnthropicProvider if provider == "anthropic" else loaded.OpenAIProvider,
        )
    return found


def parse_json(text: str, schema: dict[str, Any] | None) -> Any:
    """The model's answer as JSON, checked against `schema`; AiStepError
    `invalid_json_output` (retryable) when it is not JSON or does not match."""
    body = text.strip()
    if body.startswith("```"):  # a fenced block despite the instruction
        body = body.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        value = json.loads(body)
    except ValueError:
        raise AiStepError(
            "the model's answer is not valid JSON", code="invalid_json_output", retryable=True
        ) from None
    if schema is not None:
        try:
            invalid = safe_jsonschema.best_error(schema, value)
        except (safe_jsonschema.PatternTooSlow, safe_jsonschema.SchemaTooSlowToCheck) as slow:
            raise AiStepError(
                f"json_schema cannot be checked: {slow}", code="json_schema_too_slow"
            ) from None
        if invalid is not None:
            where = "/".join(str(p) for p in invalid.absolute_path) or "(root)"
            raise AiStepError(
                f"the model's JSON does not match json_schema at {where}: {invalid.message}",
                code="invalid_json_output",
                retryable=True,
            )
    return value


async def run_ai(runtime: Runtime, call: AiCall) -> dict[str, Any]:
    """Make one AI call with routing, budget, breaker, accounting and metrics."""
    messages = [Message(role="user", content=call.prompt)]
    reservation, credential, category = await _reserve(runtime, call, messages, ())
    response, cost, _ = await _call(runtime, call, credential, reservation, category, messages, ())
    model = reservation.model
    output: dict[str, Any] = {
        "text": response.text,
        "model": model.name,
        "provider": model.provider,
        "category": category,
        "downgraded_from": reservation.downgraded_from,
        "stop_reason": response.stop_reason,
        "usage": {
            "input_tokens": response.input_tokens,
            "output_tokens": response.output_tokens,
            "cost_usd": str(cost),
        },
    }
    if call.json_output:
        output["json"] = parse_json(response.text, call.json_schema)
    return output


async def run_turn(
    runtime: Runtime,
    call: AiCall,
    *,
    messages: list[Message],
    tools: tuple[ToolSpec, ...],
    step_limit_usd: Decimal | None = None,
) -> Turn:
    """One model turn of a conversation with tools: reserved against every budget (the step's
    `step_limit_usd` too) before it is sent, settled and counted once after."""
    reservation, credential, category = await _reserve(
        runtime, call, messages, tools, step_limit_usd=step_limit_usd
    )
    response, cost, latency_ms = await _call(
        runtime, call, credential, reservation, category, messages, tools
    )
    return Turn(
        text=response.text,
        tool_calls=response.tool_calls,
        stop_reason=response.stop_reason,
        model=reservation.model.name,
        provider=reservation.model.provider,
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=cost,
        latency_ms=latency_ms,
    )


async def _reserve(
    runtime: Runtime,
    call: AiCall,
    messages: list[Message],
    tools: tuple[ToolSpec, ...],
    *,
    step_limit_usd: Decimal | None = None,
) -> tuple[Reservation, _Credential, str | None]:
    settings = runtime.settings
    try:
        catalog = load_catalog(settings.ai_model_catalog)
    except CatalogError as error:
        raise AiStepError(str(error), code="catalog_invalid") from None
    preferred, category = _route(catalog, call)
    credential = await _credential(runtime, call, preferred.provider)
    input_tokens = (
        worst_case_input_tokens(call)
        if not tools and len(messages) == 1
        else _conversation_tokens(call, messages, tools)
    )
    try:
        reservation = await budget.reserve(
            runtime.database,
            org_id=call.org_id,
            user_id=call.user_id,
            execution_id=call.execution_id,
            step_id=call.step_id,
            category=category,
            candidates=_candidates(
                catalog, call, preferred, settings.ai_default_max_tokens, input_tokens
            ),
            downgrade_below=settings.ai_downgrade_below_fraction,
            instance_key_budget_usd=(
                settings.ai_instance_key_monthly_budget_usd if credential.instance_key else None
            ),
            step_limit_usd=step_limit_usd,
        )
    except BudgetExhausted as exhausted:
        code = "agent_budget_exhausted" if exhausted.details.get("limit") == "step" else None
        raise AiStepError(
            exhausted.message, code=code or "budget_exhausted", details=exhausted.details
        ) from None
    return reservation, credential, category


async def _call(
    runtime: Runtime,
    call: AiCall,
    credential: _Credential,
    reservation: Reservation,
    category: str | None,
    messages: list[Message],
    tools: tuple[ToolSpec, ...],
) -> tuple[AiResponse, Decimal, int]:
    """The call under its breaker; settles the reservation and counts the call. Returns the
    answer, its cost and its latency in ms."""
    settings, model = runtime.settings, reservation.model
    breaker = BREAKERS.get(
        credential.breaker,
        failure_threshold=settings.breaker_failure_threshold,
        reset_seconds=settings.breaker_reset_seconds,
    )
    try:
        await breaker.before_call()
    except CircuitOpen as error:
        await budget.settle(runtime.database, reservation, outcome="circuit_open")
        raise AiStepError(
            f"{model.provider} calls are paused after repeated failures; next trial in "
            f"{error.retry_in:.0f} s",
            code="circuit_open",
            retryable=True,
        ) from None
    request = AiRequest(
        model=model.name,
        messages=messages,
        max_tokens=_max_tokens(call, model, default=settings.ai_default_max_tokens),
        system=call.system,
        temperature=call.temperature,
        json_output=call.json_output,
        request_id=current_request_id(),
        tools=tools,
        on_text=call.on_text,
    )
    started = time.perf_counter()
    labels = (model.name, category or "none")
    try:
        response = await _complete(runtime, call.org_id, model.provider, credential, request)
    except AiProviderError as error:
        elapsed = time.perf_counter() - started
        if error.retryable or error.status in _BREAKER_STATUSES:
            await breaker.record_failure()
        else:
            await breaker.record_success()
        AI_REQUESTS.labels(*labels, "false").inc()
        AI_DURATION.labels(model.name).observe(elapsed)
        await budget.settle(
            runtime.database, reservation, outcome=error.code, latency_ms=round(elapsed * 1000)
        )
        raise AiStepError(error.message, code=error.code, retryable=error.retryable) from None
    except BaseException:
        await breaker.abandon_trial()
        await _settle_quietly(runtime, reservation, started)
        raise
    elapsed = time.perf_counter() - started
    await breaker.record_success()
    cost = model.cost(response.input_tokens, response.output_tokens)
    AI_REQUESTS.labels(*labels, "true").inc()
    AI_DURATION.labels(model.name).observe(elapsed)
    AI_TOKENS.labels(model.name, "input").inc(response.input_tokens)
    AI_TOKENS.labels(model.name, "output").inc(response.output_tokens)
    AI_COST.labels(model.name).inc(float(cost))
    await budget.settle(
        runtime.database,
        reservation,
        outcome="ok",
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=cost,
        latency_ms=round(elapsed * 1000),
    )
    return response, cost, round(elapsed * 1000)


async def _settle_quietly(runtime: Runtime, reservation: Reservation, started: float) -> None:
    """A cancelled or crashed call: release its reservation if the database lets us; otherwise
    housekeeping releases it after AI_RESERVATION_TTL_SECONDS."""
    try:
        await budget.settle(
            runtime.database,
            reservation,
            outcome="interrupted",
            latency_ms=round((time.perf_counter() - started) * 1000),
        )
    except Exception:
        log.warning("ai_reservation_left_pending", usage_id=str(reservation.usage_id))
