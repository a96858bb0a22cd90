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

from taskloom.config import Settings
from tests.cli_support import serve_api
from tests.factories import register
from tests.fakes.hostile import HostileServer
from tests.queue.conftest import StartWorker, worker_env
from tests.servers import free_port


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "service": attributes.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "attributes": {a.key for a in span.attributes},
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
