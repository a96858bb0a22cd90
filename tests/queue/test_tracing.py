"""With OTEL_EXPORTER_OTLP_ENDPOINT set, a request and the job it queues form one trace: the
API's HTTP and SQL spans and the worker's job and step spans arrive at a real OTLP/HTTP
receiver with the same trace id."""

from __future__ import annotations

import asyncio
import gzip
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from taskloom.config import Settings
from tests.cli_support import serve_api
from tests.factories import Account, register
from tests.fakes.ai_apis import FakeAnthropic
from tests.fakes.hostile import HostileServer
from tests.fakes.mcp_server import start_mcp_server
from tests.fakes.receiver import Receiver as WebhookReceiver
from tests.servers import free_port
from tests.workers import (
    StartWorker,
    create_workflow,
    execute,
    wait_for_status,
    worker_env,
)


def _value(value: AnyValue) -> Any:
    """An OTLP attribute value as Python (arrays as tuples)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "resource": resource,
                                "scope": scope_spans.scope.name,
                                "name": span.name,
                                "kind": span.kind,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "attributes": {a.key for a in span.attributes},
                                "values": {a.key: _value(a.value) for a in span.attributes},
                                "text": " ".join(
                                    [span.name, span.status.message]
                                    + [f"{a.key}={a.value}" for a in span.attributes]
                                    + [
                                        f"{a.key}={a.value}"
                                        for event in span.events
                                        for a in event.attributes
                                    ]
                                ),
                            }
                        )


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    collected = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                collected.add(body)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield collected, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_a_request_and_its_job_share_one_trace(
    receiver: tuple[Receiver, str],
    queue_settings: Settings,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    collected, endpoint = receiver
    otel = {"otel_exporter_otlp_endpoint": endpoint, "otel_bsp_schedule_delay": 100}
    worker = start_worker(**otel)
    port = free_port()
    api_process = serve_api(worker_env(queue_settings, **otel), port, tmp_path / "api.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            owner = await register(api, label="traced", organization_name="Traced Org")
            created = await api.post(
                "/api/workflows",
                json={
                    "name": "traced",
                    "definition": {
                        "steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]
                    },
                },
                headers=owner.headers,
            )
            accepted = await api.post(
                f"/api/workflows/{created.json()['id']}/execute", headers=owner.headers
            )
            execution = accepted.json()["execution_id"]
            for _ in range(100):
                state = await api.get(f"/api/executions/{execution}", headers=owner.headers)
                if state.json()["status"] == "succeeded":
                    break
                await asyncio.sleep(0.1)
            assert state.json()["status"] == "succeeded"
    finally:
        api_process.send_signal(signal.SIGTERM)
        api_process.wait(timeout=30)
        worker.send(signal.SIGTERM)
        worker.wait(30)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with collected.lock:
            names = {(s["service"], s["name"]) for s in collected.spans}
        if ("taskloom-worker", "step transform") in names:
            break
        await asyncio.sleep(0.1)
    spans = collected.spans
    execute = next(
        s
        for s in spans
        if s["service"] == "taskloom-api"
        and s["name"] == "POST /api/workflows/{workflow_id}/execute"
    )
    trace_id = execute["trace_id"]
    same_trace = [s for s in spans if s["trace_id"] == trace_id]
    kinds = {(s["service"], s["name"]) for s in same_trace}
    sql = [
        s
        for s in same_trace
        if s["service"] == "taskloom-api" and any(a.startswith("db.") for a in s["attributes"])
    ]
    assert sql, kinds  # the request's SQL statements
    assert ("taskloom-worker", "job orchestration") in kinds, kinds
    assert ("taskloom-worker", "step transform") in kinds, kinds
    # The API's producer span, parent of the worker's job span.
    send = next(s for s in same_trace if s["name"] == "send orchestration")
    assert send["kind"] == SPAN_KIND_PRODUCER
    assert send["values"]["messaging.operation.type"] == "send"
    assert send["values"]["messaging.message.id"] == execution
    job = next(s for s in same_trace if s["name"] == "job orchestration")
    assert job["parent_id"] == send["span_id"]


async def test_spans_carry_no_query_string_or_userinfo_of_requests_in_or_out(
    receiver: tuple[Receiver, str],
    queue_settings: Settings,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """A one-time download link's `?token=` (server span) and a tenant URL's userinfo and API key
    (the http step's client span) never reach the trace collector."""
    collected, endpoint = receiver
    otel = {"otel_exporter_otlp_endpoint": endpoint, "otel_bsp_schedule_delay": 100}
    worker = start_worker(**otel)
    port = free_port()
    api_process = serve_api(worker_env(queue_settings, **otel), port, tmp_path / "api.log")
    secrets = ("s3cret-download-token-0123456789", "hunter2pass", "s3cret-api-key")
    with HostileServer("ok") as tenant_api:
        outgoing = (
            tenant_api.url.replace("://", f"://user:{secrets[1]}@") + f"/x?api_key={secrets[2]}"
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
                owner = await register(api, label="scrubbed", organization_name="Scrubbed Org")
                link = await api.get(
                    f"/api/user/data-export/{uuid.uuid4()}/download",
                    params={"token": secrets[0]},
                )
                assert link.status_code == 404, link.text
                steps = [{"id": "call", "type": "http", "args": {"url": outgoing}}]
                created = await api.post(
                    "/api/workflows",
                    json={"name": "scrubbed", "definition": {"steps": steps}},
                    headers=owner.headers,
                )
                accepted = await api.post(
                    f"/api/workflows/{created.json()['id']}/execute", headers=owner.headers
                )
                execution = accepted.json()["execution_id"]
                for _ in range(100):
                    state = await api.get(f"/api/executions/{execution}", headers=owner.headers)
                    if state.json()["status"] == "succeeded":
                        break
                    await asyncio.sleep(0.1)
                assert state.json()["status"] == "succeeded", state.text
                assert tenant_api.requests == 1
        finally:
            api_process.send_signal(signal.SIGTERM)
            api_process.wait(timeout=30)
            worker.send(signal.SIGTERM)
            worker.wait(30)

    def spans_of_both_calls() -> tuple[list[str], list[str]]:
        with collected.lock:
            server = [
                s["text"]
                for s in collected.spans
                if s["service"] == "taskloom-api" and "/download" in s["text"]
            ]
            client = [
                s["text"]
                for s in collected.spans
                if s["service"] == "taskloom-worker" and "/x" in s["text"]
            ]
        return server, client

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(spans_of_both_calls()):
            break
        await asyncio.sleep(0.1)
    server, client = spans_of_both_calls()
    assert server, "no span of the download request"
    assert client, "no span of the http step's outgoing request"
    assert f"127.0.0.1:{tenant_api.url.rsplit(':', 1)[1]}/x" in " ".join(
        client
    )  # host and path stay
    with collected.lock:
        everything = " ".join(s["text"] for s in collected.spans)
    for secret in secrets:
        assert secret not in everything


def _ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while (parent := by_id.get(span["parent_id"])) is not None:
        names.append(parent["name"])
        span = parent
    return names


async def test_ai_and_mcp_calls_make_client_spans_and_genai_messaging_attributes_in_one_trace(
    receiver: tuple[Receiver, str],
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
) -> None:
    """An `ai` step (fake Anthropic) and a `tool` step over MCP (a real MCP server): the job span
    has the messaging attributes, a `chat <model>` span the GenAI ones with the fake's token
    counts, each HTTP call to the model and to the MCP server a client span with scheme, host
    and path; no prompt, answer or key reaches the collector (connections refuse a base URL
    with a query string or userinfo; `test_httpx2_client_spans_name_no_query_or_userinfo` checks
    the attributes themselves), and the
    resource names OTEL_SERVICE_NAME and the deployment environment."""
    collected, endpoint = receiver
    secrets = (
        "sk-ant-traced-key-4e1f",  # the AI connection's key
        "personal-prompt-text-7f3a",  # in the prompt
        "the-models-answer-5c1d",  # in the completion
    )
    with FakeAnthropic(api_key=secrets[0]) as model_api, start_mcp_server(None) as notes:
        model_api.reply(f"An answer: {secrets[2]}", input_tokens=321, output_tokens=45)
        for body in (
            {
                "provider": "anthropic",
                "name": "claude",
                "base_url": model_api.base_url,
                "credentials": {"api_key": secrets[0]},
            },
            {"provider": "mcp", "name": "notes", "base_url": notes.url, "credentials": {}},
        ):
            created = await api.post("/api/connections", json=body, headers=owner.headers)
            assert created.status_code == 201, created.text
        workflow_id = await create_workflow(
            api,
            owner,
            [
                {
                    "id": "summary",
                    "type": "ai",
                    "args": {"model": "claude-haiku-4-5", "prompt": f"Summarise {secrets[1]}"},
                },
                {
                    "id": "lookup",
                    "type": "tool",
                    "args": {
                        "connection": "notes",
                        "tool": "search_notes",
                        "args": {"query": "{{ steps.summary.output.model }}"},
                    },
                },
            ],
        )
        worker = start_worker(
            otel_exporter_otlp_endpoint=endpoint,
            otel_bsp_schedule_delay=100,
            otel_service_name="traced-worker-7",
        )
        execution_id = await execute(api, owner, workflow_id)
        done = await wait_for_status(api, owner, execution_id)
        assert done["status"] == "succeeded", done
        assert [name for name, _ in notes.calls] == ["search_notes"]
        worker.send(signal.SIGTERM)  # flushes what is buffered
        worker.wait(30)

    with collected.lock:
        spans = list(collected.spans)
    job = next(
        s
        for s in spans
        if s["name"] == "job orchestration"
        and s["values"].get("taskloom.execution_id") == execution_id
    )
    assert job["kind"] == SPAN_KIND_CONSUMER
    assert {
        key: job["values"].get(key)
        for key in (
            "messaging.system",
            "messaging.destination.name",
            "messaging.operation.type",
            "messaging.message.id",
        )
    } == {
        "messaging.system": "bullmq",
        "messaging.destination.name": "orchestration",
        "messaging.operation.type": "process",
        "messaging.message.id": execution_id,
    }
    same_trace = [s for s in spans if s["trace_id"] == job["trace_id"]]
    by_id = {s["span_id"]: s for s in same_trace}

    chat = next(s for s in same_trace if s["name"] == "chat claude-haiku-4-5")
    assert chat["kind"] == SPAN_KIND_CLIENT
    assert _ancestors(chat, by_id)[:2] == ["step ai", "job orchestration"]
    assert {key: chat["values"].get(key) for key in _GEN_AI_KEYS} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "anthropic",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5",
        "gen_ai.usage.input_tokens": 321,
        "gen_ai.usage.output_tokens": 45,
    }

    clients = [s for s in same_trace if s["scope"] == "taskloom.httpx2"]  # one per attempt
    assert all(s["kind"] == SPAN_KIND_CLIENT for s in clients)
    to_model = [
        s for s in clients if s["values"].get("url.full") == f"{model_api.base_url}/v1/messages"
    ]
    assert len(to_model) == 1, [s["values"] for s in clients]
    assert "chat claude-haiku-4-5" in _ancestors(to_model[0], by_id)
    assert to_model[0]["values"]["http.request.method"] == "POST"
    assert to_model[0]["values"]["http.response.status_code"] == 200
    to_mcp = [s for s in clients if s["values"].get("url.full") == notes.url]
    assert to_mcp, [s["values"] for s in clients]
    assert all("step tool" in _ancestors(s, by_id) for s in to_mcp)
    assert ("POST", 200) in {
        (s["values"]["http.request.method"], s["values"].get("http.response.status_code"))
        for s in to_mcp
    }

    resource = job["resource"]
    assert resource["service.name"] == "traced-worker-7"  # OTEL_SERVICE_NAME wins
    assert resource["deployment.environment.name"] == "test"  # TASKLOOM_ENV
    everything = " ".join(s["text"] for s in spans)
    for secret in secrets:
        assert secret not in everything
    assert all("?" not in s["values"]["url.full"] for s in to_model + to_mcp)


_GEN_AI_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.system",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 3, 4, 5  # OTLP's Span.SpanKind


async def test_webhook_and_export_jobs_make_consumer_spans_with_messaging_attributes(
    receiver: tuple[Receiver, str],
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
) -> None:
    """A webhook delivery's job span (parent of the delivery's HTTP client span) and a data
    export's carry the messaging attributes too."""
    collected, endpoint = receiver
    hooks = WebhookReceiver()
    try:
        created = await api.post(
            "/api/webhooks",
            json={"url": hooks.url, "events": ["workflow.created"]},
            headers=owner.headers,
        )
        assert created.status_code == 201, created.text
        worker = start_worker(
            otel_exporter_otlp_endpoint=endpoint,
            otel_bsp_schedule_delay=100,
            webhook_dispatch_interval_seconds=0.2,
        )
        await create_workflow(api, owner, [{"id": "t", "type": "transform", "args": {"value": 1}}])
        queued = await api.post("/api/user/data-export", headers=owner.headers)
        assert queued.status_code == 202, queued.text
        export_id = queued.json()["request_id"]
        status: dict[str, Any] = {}
        for _ in range(200):
            path = f"/api/user/data-export/{export_id}"
            status = (await api.get(path, headers=owner.headers)).json()
            if status["status"] == "ready" and hooks.received:
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "ready", status
        assert len(hooks.received) == 1
        worker.send(signal.SIGTERM)  # flushes what is buffered
        worker.wait(30)

    finally:
        hooks.stop()

    with collected.lock:
        spans = list(collected.spans)
    by_name = {s["name"]: s for s in spans if s["name"] in ("job webhooks", "job gdpr")}
    assert set(by_name) == {"job webhooks", "job gdpr"}, {s["name"] for s in spans}
    for queue, span in (("webhooks", by_name["job webhooks"]), ("gdpr", by_name["job gdpr"])):
        assert span["kind"] == SPAN_KIND_CONSUMER
        assert span["values"]["messaging.system"] == "bullmq"
        assert span["values"]["messaging.destination.name"] == queue
        assert span["values"]["messaging.operation.type"] == "process"
    assert by_name["job gdpr"]["values"]["messaging.message.id"] == export_id
    assert by_name["job webhooks"]["values"]["messaging.message.id"]
    delivery = by_name["job webhooks"]
    posts = [
        s
        for s in spans
        if s["kind"] == SPAN_KIND_CLIENT
        and s["trace_id"] == delivery["trace_id"]
        and hooks.url.split("://", 1)[1] in s["text"]
    ]
    assert posts, "no client span of the delivery"
