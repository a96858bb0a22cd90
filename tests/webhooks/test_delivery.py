"""Outgoing webhooks end to end: events written by the outbox triggers, delivered by a real
worker, signed as docs/WEBHOOKS.md says, retried, recorded, and endpoints disabled when they
keep failing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from taskloom.runtime import Runtime
from taskloom.webhooks.delivery import dispatch_pending
from tests.factories import Account
from tests.fakes.hostile import HUGE_BYTES, HostileServer
from tests.fakes.receiver import Receiver
from tests.workers import (
    ProxiedDatabase,
    StartWorker,
    create_workflow,
    execute,
    wait_for_status,
)

FAST = {"webhook_backoff_ms": 100, "webhook_dispatch_interval_seconds": 0.2}
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input.n }}"}}]


def verify(secret: str, header: str, body: bytes, *, now: float | None = None) -> bool:
    """The receiver's check, written from docs/WEBHOOKS.md (not from Taskloom's code)."""
    parts = [part.split("=", 1) for part in header.split(",")]
    timestamps = [value for key, value in parts if key == "t"]
    signatures = [value for key, value in parts if key == "v1"]
    if len(timestamps) != 1 or not signatures:
        return False
    if abs((now or time.time()) - int(timestamps[0])) > 300:
        return False  # too old (or from the future): a replay
    expected = hmac.new(
        secret.encode(), timestamps[0].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


async def _webhook(
    api: httpx.AsyncClient, owner: Account, url: str, events: list[str]
) -> dict[str, Any]:
    response = await api.post(
        "/api/webhooks", json={"url": url, "events": events}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["secret"].startswith("whsec_")
    return body


async def _deliveries(api: httpx.AsyncClient, owner: Account, hook_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/api/webhooks/{hook_id}/deliveries", headers=owner.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _until(check: Any, within: float = 20) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_events_arrive_signed_and_the_signature_checks_out(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    hook = await _webhook(api, owner, receiver.url, ["workflow.created", "execution.succeeded"])
    start_worker(**FAST)
    workflow_id = await create_workflow(api, owner, STEPS)
    response = await api.post(
        f"/api/workflows/{workflow_id}/execute",
        json={"input": {"n": 7}},
        headers={**owner.headers, "X-Request-ID": "req-webhook-42"},
    )
    assert response.status_code == 202
    execution_id = response.json()["execution_id"]
    await wait_for_status(api, owner, execution_id)
    received = receiver.wait_for(2)
    by_type = {r.headers["taskloom-event"]: r for r in received}
    assert set(by_type) == {"workflow.created", "execution.succeeded"}

    done = by_type["execution.succeeded"]
    event = json.loads(done.body)
    assert event["type"] == "execution.succeeded"
    assert event["data"]["execution_id"] == execution_id
    assert event["data"]["workflow_id"] == workflow_id
    assert done.headers["taskloom-delivery"] == event["id"]
    assert done.headers["x-request-id"] == "req-webhook-42"  # the action that caused it
    header = done.headers["taskloom-signature"]
    assert verify(hook["secret"], header, done.body)
    assert not verify(hook["secret"], header, done.body.replace(b"succeeded", b"failed"))
    assert not verify("whsec_wrong", header, done.body)
    assert not verify(hook["secret"], header, done.body, now=time.time() + 301)  # stale

    deliveries = await _until(lambda: _succeeded(api, owner, hook["id"], 2))
    assert {d["attempt"] for d in deliveries} == {1}


async def _succeeded(
    api: httpx.AsyncClient, owner: Account, hook_id: str, count: int
) -> list[dict[str, Any]] | None:
    rows = await _deliveries(api, owner, hook_id)
    done = [d for d in rows if d["status"] == "succeeded"]
    return done if len(done) >= count else None


async def test_two_failures_then_success_make_three_recorded_attempts(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    hook = await _webhook(api, owner, receiver.url, ["ping"])
    receiver.statuses = [500, 500]
    start_worker(**FAST)
    ping = await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
    assert ping.status_code == 202, ping.text
    receiver.wait_for(3)

    async def three() -> list[dict[str, Any]] | None:
        rows = await _deliveries(api, owner, hook["id"])
        return rows if any(r["status"] == "succeeded" for r in rows) else None

    rows = sorted(await _until(three), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"], r["response_code"]) for r in rows] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "succeeded", 200),
    ]
    assert {r["event_id"] for r in rows} == {ping.json()["event_id"]}
    endpoint = await api.get(f"/api/webhooks/{hook['id']}", headers=owner.headers)
    assert endpoint.json()["consecutive_failures"] == 0  # reset by the success


async def test_an_endpoint_that_keeps_failing_is_disabled_and_the_audit_log_says_so(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    hook = await _webhook(api, owner, receiver.url, ["ping"])
    receiver.default_status = 500
    start_worker(**FAST, webhook_max_attempts=3, webhook_disable_after_failures=3)
    await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)

    async def disabled() -> dict[str, Any] | None:
        body = (await api.get(f"/api/webhooks/{hook['id']}", headers=owner.headers)).json()
        return body if not body["enabled"] else None

    endpoint = await _until(disabled)
    assert endpoint["consecutive_failures"] == 3
    assert "3 failed deliveries in a row" in endpoint["disabled_reason"]
    rows = await _deliveries(api, owner, hook["id"])
    assert sorted((r["attempt"], r["status"]) for r in rows) == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    logs = await api.get(
        "/api/audit-logs",
        params={"action": "webhook.disabled", "scope": "org"},
        headers=owner.headers,
    )
    assert [row["resource_id"] for row in logs.json()["items"]] == [hook["id"]]
    # A disabled endpoint gets no new events until an admin enables it again.
    await create_workflow(api, owner, STEPS)
    await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
    await asyncio.sleep(1)
    assert len(receiver.received) == 3


async def test_during_a_rotation_both_secrets_sign(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    hook = await _webhook(api, owner, receiver.url, ["ping"])
    rotated = await api.post(
        f"/api/webhooks/{hook['id']}/rotate-secret",
        json={"overlap_seconds": 3600},
        headers=owner.headers,
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != hook["secret"]
    listed = await api.get("/api/webhooks", headers=owner.headers)
    assert hook["secret"] not in listed.text
    assert new_secret not in listed.text
    start_worker(**FAST)
    await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
    [ping] = receiver.wait_for(1)
    header = ping.headers["taskloom-signature"]
    assert header.count("v1=") == 2
    assert verify(new_secret, header, ping.body)
    assert verify(hook["secret"], header, ping.body)


async def test_failed_and_cancelled_executions_are_events_too(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    await _webhook(api, owner, receiver.url, ["execution.failed", "execution.cancelled"])
    failing = await create_workflow(
        api, owner, [{"id": "bad", "type": "transform", "args": {"value": "{{ nope.x }}"}}]
    )
    queued_only = await create_workflow(api, owner, STEPS)
    cancelled = await execute(api, owner, queued_only)
    await api.post(f"/api/executions/{cancelled}/cancel", headers=owner.headers)
    start_worker(**FAST)
    failed = await execute(api, owner, failing)
    await wait_for_status(api, owner, failed)
    received = receiver.wait_for(2)
    events = {json.loads(r.body)["type"]: json.loads(r.body)["data"] for r in received}
    assert events["execution.cancelled"]["execution_id"] == cancelled
    assert events["execution.failed"]["execution_id"] == failed
    assert events["execution.failed"]["error_code"] == "template_error"


async def test_a_database_outage_does_not_use_up_a_deliverys_attempts(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    receiver: Receiver,
    queue_runtime: Runtime,
    proxied_database: ProxiedDatabase,
) -> None:
    """The worker reaches PostgreSQL through a proxy cut for longer than five attempts with a
    100 ms backoff would take: the delivery waits and is sent once the database is back."""
    hook = await _webhook(api, owner, receiver.url, ["ping"])
    worker = start_worker(**FAST, database_url=proxied_database.url)
    with proxied_database.proxy.outage():
        ping = await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
        assert ping.status_code == 202, ping.text
        # The worker's own dispatcher cannot read the outbox now; hand the job over for it.
        assert await dispatch_pending(queue_runtime) >= 1
        # The worker took the job twice, and twice put it back (a counted attempt would show
        # as attempt 2 below).
        await worker.wait_for_log("database_unavailable", containing="queue=webhooks", times=2)
        assert receiver.received == []
    receiver.wait_for(1)
    rows = await _until(lambda: _succeeded(api, owner, hook["id"], 1))
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "succeeded")]


async def _attempts(api: httpx.AsyncClient, owner: Account, hook_id: str) -> Any:
    """The delivery rows once the (single) attempt is recorded."""
    rows = await _deliveries(api, owner, hook_id)
    return rows if rows and all(r["status"] in ("succeeded", "failed") for r in rows) else None


async def test_a_receiver_dripping_its_answer_is_cut_at_the_attempts_deadline(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    """httpx's timeout is per read: one byte every 0.5 s would hold the attempt for ever."""
    with HostileServer("drip") as server:
        hook = await _webhook(api, owner, f"{server.url}/hooks", ["ping"])
        start_worker(**FAST, webhook_timeout_seconds=1.5, webhook_max_attempts=1)
        await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
        [row] = await _until(lambda: _attempts(api, owner, hook["id"]), within=15)
        assert (row["status"], row["response_code"]) == ("failed", None)
        assert row["error"] == "no answer within 1.5 s"
        assert 1_400 <= row["duration_ms"] <= 2_500, row
        assert server.body_bytes_sent >= 2  # the body was really dripping when it was cut
        await _until(lambda: _true(server.hung_up_at is not None), within=5)
        assert server.hung_up_at is not None
        assert server.first_request_at is not None
        assert server.hung_up_at - server.first_request_at < 3


async def _true(value: bool) -> bool:
    return value


async def test_a_receivers_huge_answer_is_read_only_up_to_64_kib(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    with HostileServer("huge") as server:
        hook = await _webhook(api, owner, f"{server.url}/hooks", ["ping"])
        start_worker(**FAST, webhook_max_attempts=1)
        await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
        [row] = await _until(lambda: _attempts(api, owner, hook["id"]), within=15)
        # Only the status matters: a 200 with a body too long to read is still delivered.
        assert (row["status"], row["response_code"], row["error"]) == ("succeeded", 200, None)
        await _until(lambda: _true(server.hung_up_at is not None), within=5)
    assert not server.body_completed
    # What the worker read (64 KiB) plus what the sockets' buffers took before it hung up.
    assert server.body_bytes_sent < 1024 * 1024 < HUGE_BYTES, server.body_bytes_sent


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_not_followed_and_the_attempt_fails_with_its_status(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, status: int
) -> None:
    with (
        HostileServer("ok") as elsewhere,
        HostileServer("redirect", location=f"{elsewhere.url}/stolen", status=status) as server,
    ):
        hook = await _webhook(api, owner, f"{server.url}/hooks", ["ping"])
        start_worker(**FAST, webhook_max_attempts=1)
        await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
        [row] = await _until(lambda: _attempts(api, owner, hook["id"]), within=15)
        assert (row["status"], row["response_code"], row["error"]) == (
            "failed",
            status,
            f"HTTP {status}",
        )
        assert server.requests == 1
        await asyncio.sleep(0.5)
        assert elsewhere.requests == 0  # the signed body never reached the redirect's target


async def test_a_token_in_a_webhook_url_never_reaches_the_workers_log(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    """Slack-style webhook URLs carry their secret in the path; the worker logs hosts only."""
    token = "T0KEN-in-the-path-7f3a9c"
    hook = await _webhook(api, owner, f"{receiver.url}/{token}?sig={token}", ["ping"])
    receiver.statuses = [500]  # one failed attempt, then a success: both kinds of log line
    worker = start_worker(**FAST, log_level="debug")
    await api.post(f"/api/webhooks/{hook['id']}/test", headers=owner.headers)
    received = receiver.wait_for(2)
    assert all(token in r.path for r in received)  # the token really went out
    await _until(lambda: _succeeded(api, owner, hook["id"], 1))
    output = worker.output()
    assert "webhook_attempt" in output  # the worker did log the attempts
    assert token not in output


async def test_an_approval_step_sends_approval_requested_with_a_link_to_its_page(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    hook = await _webhook(api, owner, receiver.url, ["approval.requested"])
    start_worker(**FAST, public_url="https://taskloom.example.com/")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "ok",
                "type": "approval",
                "args": {"approvers": {"role": "admin"}, "message": "Ship {{ input.n }}?"},
            }
        ],
    )
    response = await api.post(
        f"/api/workflows/{workflow_id}/execute",
        json={"input": {"n": 7}},
        headers=owner.headers,
    )
    assert response.status_code == 202, response.text
    execution_id = response.json()["execution_id"]
    [sent] = receiver.wait_for(1)
    assert sent.headers["taskloom-event"] == "approval.requested"
    assert verify(hook["secret"], sent.headers["taskloom-signature"], sent.body)
    event = json.loads(sent.body)
    assert event["type"] == "approval.requested"
    [pending] = (await api.get("/api/approvals", headers=owner.headers)).json()
    assert event["data"] == {
        "approval_id": pending["id"],
        "execution_id": execution_id,
        "step_id": "ok",
        "item_index": None,
        "url": f"https://taskloom.example.com/ui/approvals/{pending['id']}",
    }
    assert "Ship" not in sent.body.decode()  # what is asked stays behind the sign-in
    # The link authorizes nothing: without a session it leads to the sign-in page.
    opened = await api.get(f"/ui/approvals/{pending['id']}")
    assert opened.status_code == 303
    assert opened.headers["location"].startswith("/ui/login?next=")
    await _until(lambda: _succeeded(api, owner, hook["id"], 1))
    # Asked once: the step that runs again once decided finds its approval and sends nothing.
    decided = await api.post(
        f"/api/executions/{execution_id}/steps/ok/approve", headers=owner.headers
    )
    assert decided.status_code == 200, decided.text
    assert (await wait_for_status(api, owner, execution_id))["status"] == "succeeded"
    await asyncio.sleep(0.5)  # two dispatch ticks
    assert len(receiver.received) == 1


async def test_deliveries_to_one_endpoint_reuse_one_kept_alive_connection(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker, receiver: Receiver
) -> None:
    """The worker's outbound pool keeps the endpoint's client (taskloom/outbound_pool.py):
    deliveries one after another go over the socket the first one opened."""
    await _webhook(api, owner, receiver.url, ["workflow.created"])
    start_worker(**FAST)
    for n in range(1, 5):
        await create_workflow(api, owner, STEPS)
        receiver.wait_for(n)
    assert len(receiver.received) == 4
    assert receiver.connections == 1
