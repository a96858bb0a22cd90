"""`POST /hooks/{id}`, as senders call it: requests signed by the providers' own code (stripe,
standardwebhooks, Taskloom's webhook signing) or by their documented algorithm (GitHub, Slack),
against the in-process API on real PostgreSQL and Redis, with a real worker where an execution
must run. Each scheme: a signed request starts the workflow with its body, allow-listed headers
and query; a tampered body and a stale timestamp are refused and recorded without the body; a
replayed delivery answers with the first execution."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import standardwebhooks
import stripe
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select, update

from taskloom.app import create_app
from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import WorkflowExecution
from taskloom.runtime import Runtime
from taskloom.triggers.models import TriggerDelivery, WorkflowTrigger
from taskloom.triggers.service import ACCEPTED_PRUNE_EVERY
from taskloom.webhooks import signing
from tests.factories import Account
from tests.in_process import asgi_client
from tests.workers import CountingServer, StartWorker, create_workflow, unique_key, wait_for_status

STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input.body }}"}}]
QUERY = "?source=ci&tag=a&tag=b"
STALE = 600  # seconds: twice the tolerance

Signer = Callable[[str, str, int], tuple[bytes, dict[str, str]]]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def sign_taskloom(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    body = _json({"id": delivery, "type": "execution.succeeded", "data": {"n": 1}})
    return body, {
        "Taskloom-Signature": signing.signature_header([secret], at, body),
        "Taskloom-Delivery": delivery,
    }


def sign_stripe(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    body = _json({"id": delivery, "object": "event", "type": "invoice.paid", "data": {"n": 1}})
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=at)
    return body, {"Stripe-Signature": header}


def sign_github(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    """As GitHub documents it: `sha256=` and the hex HMAC-SHA256 of the body."""
    body = _json({"action": "opened", "number": 1})
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": "issues",
        "X-GitHub-Hook-ID": "4242",
    }


def sign_slack(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    """As Slack documents it: `v0=` and the hex HMAC-SHA256 of `v0:<timestamp>:<body>`."""
    return _slack(secret, _json({"type": "event_callback", "event_id": delivery}), at)


def _slack(secret: str, body: bytes, at: int) -> tuple[bytes, dict[str, str]]:
    digest = hmac.new(secret.encode(), f"v0:{at}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(at)}


def sign_standard(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    body = _json({"type": "invoice.paid", "data": {"n": 1}})
    when = datetime.fromtimestamp(at, UTC)
    return body, {
        "webhook-id": delivery,
        "webhook-timestamp": str(at),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(delivery, when, body),
    }


def sign_token(secret: str, delivery: str, at: int) -> tuple[bytes, dict[str, str]]:
    return _json({"n": 1}), {"Authorization": f"Bearer {secret}", "Idempotency-Key": delivery}


SIGNERS: dict[str, Signer] = {
    "taskloom": sign_taskloom,
    "stripe": sign_stripe,
    "github": sign_github,
    "slack": sign_slack,
    "standard": sign_standard,
    "token": sign_token,
}
# The headers each scheme's request hands the workflow (besides content-type and user-agent).
FORWARDED = {
    "taskloom": {"taskloom-delivery"},
    "stripe": set(),
    "github": {"x-github-delivery", "x-github-event", "x-github-hook-id"},
    "slack": {"x-slack-request-timestamp"},
    "standard": {"webhook-id", "webhook-timestamp"},
    "token": {"idempotency-key"},
}
TIMESTAMPED = ("taskloom", "stripe", "slack", "standard")


def _delivery(scheme: str) -> str:
    return {"stripe": "evt_", "standard": "msg_"}.get(scheme, "") + uuid.uuid4().hex


async def _workflow(api: httpx.AsyncClient, owner: Account, **definition: Any) -> str:
    return await create_workflow(api, owner, definition.pop("steps", STEPS), **definition)


async def _trigger(
    api: httpx.AsyncClient, owner: Account, workflow_id: str, scheme: str, **fields: Any
) -> tuple[str, str]:
    """A webhook trigger of the workflow: its id and secret."""
    created = await api.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": scheme, **fields},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["secret"]


async def _post(
    api: httpx.AsyncClient,
    trigger_id: str,
    body: bytes,
    headers: dict[str, str],
    *,
    query: str = "",
    content_type: str = "application/json",
) -> httpx.Response:
    sent = {"Content-Type": content_type, "User-Agent": "Sender/1.0", **headers}
    return await api.post(f"/hooks/{trigger_id}{query}", content=body, headers=sent)


async def _deliveries(api: httpx.AsyncClient, owner: Account, trigger_id: str) -> Any:
    listed = await api.get(f"/api/triggers/{trigger_id}/deliveries", headers=owner.headers)
    assert listed.status_code == 200, listed.text
    return listed.json()


async def _executions(api: httpx.AsyncClient, owner: Account, workflow_id: str) -> list[Any]:
    listed = await api.get(
        "/api/executions", params={"workflow_id": workflow_id}, headers=owner.headers
    )
    assert listed.status_code == 200, listed.text
    items: list[Any] = listed.json()["items"]
    return items


def _count(result: str) -> float:
    labels = {"kind": "webhook", "result": result}
    return REGISTRY.get_sample_value("workflow_triggers_total", labels) or 0.0


@pytest.mark.parametrize("scheme", list(SIGNERS))
async def test_a_signed_request_starts_the_workflow_with_body_headers_and_query(
    api: httpx.AsyncClient, owner: Account, scheme: str
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, scheme)
    body, headers = SIGNERS[scheme](secret, _delivery(scheme), int(time.time()))
    started = _count("started")

    answer = await _post(api, trigger_id, body, headers, query=QUERY)

    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["execution_id"]
    assert answer.json() == {"execution_id": execution_id}
    assert answer.headers["location"] == f"/api/executions/{execution_id}"
    execution = (await api.get(f"/api/executions/{execution_id}", headers=owner.headers)).json()
    assert execution["workflow_id"] == workflow_id
    assert (execution["trigger_kind"], execution["trigger_id"]) == ("webhook", trigger_id)
    assert execution["triggered_by"] is None
    forwarded = execution["input"]["headers"]
    assert set(forwarded) == {"content-type", "user-agent", *FORWARDED[scheme]}
    assert forwarded["user-agent"] == "Sender/1.0"
    assert all(forwarded[name] == value for name, value in headers.items() if name in forwarded)
    assert execution["input"] == {
        "body": json.loads(body),
        "headers": forwarded,
        "query": {"source": "ci", "tag": ["a", "b"]},
    }
    assert _count("started") == started + 1
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert (delivery["status"], delivery["execution_id"]) == ("accepted", execution_id)


@pytest.mark.parametrize("scheme", list(SIGNERS))
async def test_a_tampered_body_is_rejected_and_recorded_without_the_body(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, scheme: str
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, scheme)
    body, headers = SIGNERS[scheme](secret, _delivery(scheme), int(time.time()))
    marker = f"tampered-{uuid.uuid4().hex}"
    tampered = json.dumps({**json.loads(body), "injected": marker}).encode()
    rejected = _count("rejected")

    answer = await _post(api, trigger_id, tampered, headers)

    if scheme == "token":  # a token signs nothing: whoever holds it may send any body
        assert answer.status_code == 202, answer.text
        return
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "trigger_rejected"
    assert await _executions(api, owner, workflow_id) == []
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert delivery["status"] == "rejected"
    assert delivery["reason"] == "signature_mismatch"
    assert delivery["execution_id"] is None
    assert _count("rejected") == rejected + 1
    async with system_transaction(queue_runtime.database) as db:
        rows = (
            await db.execute(
                select(TriggerDelivery).where(TriggerDelivery.trigger_id == trigger_id)
            )
        ).scalars()
        assert all(marker not in repr(vars(row)) for row in rows)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
async def test_a_stale_timestamp_is_rejected(
    api: httpx.AsyncClient, owner: Account, scheme: str
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, scheme)
    body, headers = SIGNERS[scheme](secret, _delivery(scheme), int(time.time()) - STALE)

    answer = await _post(api, trigger_id, body, headers)

    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "trigger_rejected"
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert (delivery["status"], delivery["reason"]) == ("rejected", "timestamp_stale")
    assert await _executions(api, owner, workflow_id) == []


@pytest.mark.parametrize("scheme", list(SIGNERS))
async def test_a_replayed_delivery_answers_with_the_first_execution(
    api: httpx.AsyncClient, owner: Account, scheme: str
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, scheme)
    delivery_id = _delivery(scheme)
    body, headers = SIGNERS[scheme](secret, delivery_id, int(time.time()))
    first = await _post(api, trigger_id, body, headers)
    assert first.status_code == 202, first.text
    duplicates = _count("duplicate")

    again = await _post(api, trigger_id, body, headers)

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert [e["id"] for e in await _executions(api, owner, workflow_id)] == [
        first.json()["execution_id"]
    ]
    assert _count("duplicate") == duplicates + 1
    listed = await _deliveries(api, owner, trigger_id)
    assert [(d["status"], d["delivery_id"], d["execution_id"]) for d in listed] == [
        ("accepted", delivery_id, first.json()["execution_id"])
    ] * 2


async def test_a_retry_with_new_timestamps_is_still_the_same_delivery(
    api: httpx.AsyncClient, owner: Account
) -> None:
    """Standard Webhooks senders sign each attempt anew (webhook-timestamp changes): the
    delivery id is bound to the body and query, not to the re-stamped headers."""
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "standard")
    delivery_id = _delivery("standard")
    now = int(time.time())
    first = await _post(api, trigger_id, *sign_standard(secret, delivery_id, now - 60))
    retry = await _post(api, trigger_id, *sign_standard(secret, delivery_id, now))
    assert (first.status_code, retry.status_code) == (202, 200)
    assert retry.json() == first.json()
    other = await _post(
        api,
        trigger_id,
        _json({"type": "other"}),
        sign_standard(secret, delivery_id, now)[1],
    )
    assert other.status_code == 401  # the signature covers the body: a forged "retry"


async def test_the_old_secret_verifies_during_the_overlap_and_not_after(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, old = await _trigger(api, owner, workflow_id, "github")
    rotated = await api.post(
        f"/api/triggers/{trigger_id}/rotate-secret",
        json={"overlap_seconds": 3600},
        headers=owner.headers,
    )
    new = rotated.json()["secret"]
    for secret in (old, new):
        answer = await _post(api, trigger_id, *sign_github(secret, _delivery("github"), 0))
        assert answer.status_code == 202, answer.text

    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            update(WorkflowTrigger)
            .where(WorkflowTrigger.id == trigger_id)
            .values(previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    expired = await _post(api, trigger_id, *sign_github(old, _delivery("github"), 0))
    assert expired.status_code == 401, expired.text
    current = await _post(api, trigger_id, *sign_github(new, _delivery("github"), 0))
    assert current.status_code == 202, current.text
    assert len(await _executions(api, owner, workflow_id)) == 3
    assert (await _deliveries(api, owner, trigger_id))[1]["reason"] == "signature_mismatch"


async def test_unknown_disabled_and_unverified_requests_get_the_same_answer(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(api, owner)
    enabled_id, secret = await _trigger(api, owner, workflow_id, "github")
    disabled_id, _ = await _trigger(api, owner, workflow_id, "github", enabled=False)
    body, headers = sign_github(secret, _delivery("github"), 0)
    forged = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    answers = [
        await _post(api, str(uuid.uuid4()), body, headers),  # no such trigger
        await _post(api, disabled_id, *sign_github(secret, _delivery("github"), 0)),
        await _post(api, enabled_id, body, forged),
    ]

    def comparable(answer: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
        request_id = answer.headers["x-request-id"]
        assert request_id.encode() in answer.content
        kept = {k: v for k, v in answer.headers.items() if k != "x-request-id"}
        return answer.status_code, answer.content.replace(request_id.encode(), b""), kept

    first = comparable(answers[0])
    assert first[0] == 401
    assert json.loads(answers[0].content)["error"]["code"] == "trigger_rejected"
    assert all(comparable(answer) == first for answer in answers[1:])
    assert [d["reason"] for d in await _deliveries(api, owner, disabled_id)] == ["trigger_disabled"]
    assert [d["reason"] for d in await _deliveries(api, owner, enabled_id)] == [
        "signature_mismatch"
    ]


async def test_a_disabled_workflow_refuses_a_verified_request_with_409(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
    paused = await api.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=owner.headers
    )
    assert paused.status_code == 200, paused.text
    answer = await _post(api, trigger_id, *sign_github(secret, _delivery("github"), 0))
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "workflow_disabled"
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert (delivery["status"], delivery["reason"]) == ("rejected", "workflow_disabled")


async def test_the_body_limit_is_one_mebibyte(api: httpx.AsyncClient, owner: Account) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "token")
    limit = 1_048_576
    padding = b"x" * (limit - len(b'{"pad":""}'))
    body = b'{"pad":"' + padding + b'"}'
    assert len(body) == limit
    token = {"X-Taskloom-Token": secret}

    accepted = await _post(api, trigger_id, body, token)
    assert accepted.status_code == 202, accepted.text[:200]
    execution_id = accepted.json()["execution_id"]
    execution = (await api.get(f"/api/executions/{execution_id}", headers=owner.headers)).json()
    assert len(execution["input"]["body"]["pad"]) == len(padding)

    refused = await _post(api, trigger_id, body + b" ", token)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["code"] == "payload_too_large"
    assert len(await _deliveries(api, owner, trigger_id)) == 1  # refused unread: not recorded


@asynccontextmanager
async def _api_with(runtime: Runtime, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API over the same servers with some settings changed."""
    changed = runtime.settings.model_copy(update=settings)
    app = create_app(runtime=dataclasses.replace(runtime, settings=changed))
    async with app.router.lifespan_context(app), asgi_client(app, ip="203.0.113.10") as client:
        yield client


async def _chunks(body: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_the_hooks_limit_holds_when_other_routes_accept_larger_bodies(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "token")
    body = b'{"pad":"' + b"x" * 1_048_576 + b'"}'
    async with _api_with(queue_runtime, max_request_body_bytes=4 * 1_048_576) as larger:
        declared = await _post(larger, trigger_id, body, {"X-Taskloom-Token": secret})
        assert declared.status_code == 413, declared.text
        streamed = await larger.post(
            f"/hooks/{trigger_id}",
            content=_chunks(body),  # chunked: no Content-Length to judge by
            headers={"Content-Type": "application/json", "X-Taskloom-Token": secret},
        )
        assert streamed.status_code == 413, streamed.text
    assert await _executions(api, owner, workflow_id) == []


async def test_a_form_body_becomes_a_dict(api: httpx.AsyncClient, owner: Account) -> None:
    """A Slack slash command: a form, signed as Slack signs every request."""
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "slack")
    form = b"command=%2Fdeploy&text=api+now&user_name=ada&channel=a&channel=b"
    _, headers = _slack(secret, form, int(time.time()))

    answer = await _post(
        api, trigger_id, form, headers, content_type="application/x-www-form-urlencoded"
    )

    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["execution_id"]
    execution = (await api.get(f"/api/executions/{execution_id}", headers=owner.headers)).json()
    assert execution["input"]["body"] == {
        "command": "/deploy",
        "text": "api now",
        "user_name": "ada",
        "channel": ["a", "b"],
    }
    assert execution["input"]["headers"]["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ("text/plain", b"hello", 415, "unsupported_media_type"),
        ("application/xml", b"<a/>", 415, "unsupported_media_type"),
        ("application/json", b'{"n": ', 400, "malformed_json"),
        ("application/json", b'{"n": "a\\u0000b"}', 422, "invalid_characters"),
        ("application/json", b'{"n": NaN}', 422, "invalid_number"),
    ],
)
async def test_a_verified_body_that_cannot_be_input_is_refused_and_recorded(
    api: httpx.AsyncClient,
    owner: Account,
    content_type: str,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
    signed = sign_github(secret, _delivery("github"), 0)[1]
    signed["X-Hub-Signature-256"] = (
        "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    )
    answer = await _post(api, trigger_id, body, signed, content_type=content_type)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == reason
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert (delivery["status"], delivery["reason"]) == ("rejected", reason)
    assert delivery["delivery_id"] == signed["X-GitHub-Delivery"]
    assert await _executions(api, owner, workflow_id) == []


async def test_input_that_breaks_the_input_schema_is_refused_listing_every_path(
    api: httpx.AsyncClient, owner: Account
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "body": {
                "type": "object",
                "properties": {
                    "amount": {"type": "integer"},
                    "currency": {"enum": ["EUR", "USD"]},
                },
                "required": ["amount", "currency"],
            }
        },
    }
    workflow_id = await _workflow(api, owner, input_schema=schema)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "token")
    token = {"Authorization": f"Bearer {secret}"}

    refused = await _post(api, trigger_id, _json({"amount": "ten", "currency": "GBP"}), token)

    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "input_invalid"
    assert sorted(e["loc"] for e in error["details"]["errors"]) == [
        ["input", "body", "amount"],
        ["input", "body", "currency"],
    ]
    [delivery] = await _deliveries(api, owner, trigger_id)
    assert delivery["status"] == "rejected"
    assert delivery["reason"].startswith("input_invalid: ")
    assert sorted(delivery["reason"].removeprefix("input_invalid: ").split(", ")) == [
        "input.body.amount",
        "input.body.currency",
    ]
    assert "ten" not in delivery["reason"]
    assert "GBP" not in delivery["reason"]
    accepted = await _post(api, trigger_id, _json({"amount": 10, "currency": "EUR"}), token)
    assert accepted.status_code == 202, accepted.text


async def test_each_trigger_has_its_own_rate_limit_whether_or_not_it_exists(
    owner: Account, queue_runtime: Runtime
) -> None:
    async with _api_with(queue_runtime, trigger_rate_limit_per_minute=2) as api:
        unknown = str(uuid.uuid4())
        answers = [await _post(api, unknown, b"{}", {}) for _ in range(3)]
        assert [a.status_code for a in answers] == [401, 401, 429]
        assert answers[2].json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answers[2].headers["retry-after"]) <= 60

        workflow_id = await _workflow(api, owner)
        trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
        statuses = [
            (await _post(api, trigger_id, *sign_github(secret, _delivery("github"), 0))).status_code
            for _ in range(3)
        ]
        assert statuses == [202, 202, 429]
        assert len(await _executions(api, owner, workflow_id)) == 2
        assert len(await _deliveries(api, owner, trigger_id)) == 2  # a refused flood writes nothing


async def test_a_full_queue_answers_429_and_records_the_rejection(
    owner: Account, queue_runtime: Runtime
) -> None:
    async with _api_with(queue_runtime, max_queued_per_org=1) as api:
        workflow_id = await _workflow(api, owner)
        trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
        first = await _post(api, trigger_id, *sign_github(secret, _delivery("github"), 0))
        assert first.status_code == 202, first.text
        refused = await _post(api, trigger_id, *sign_github(secret, _delivery("github"), 0))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_queued_executions"
        assert int(refused.headers["retry-after"]) >= 1
        listed = await _deliveries(api, owner, trigger_id)
        assert [(d["status"], d["reason"]) for d in listed] == [
            ("rejected", "too_many_queued_executions"),
            ("accepted", None),
        ]
        # The refused start's idempotency key was rolled back with it: a retry may start.
        async with system_transaction(queue_runtime.database) as db:
            await db.execute(
                update(WorkflowExecution)
                .where(WorkflowExecution.id == first.json()["execution_id"])
                .values(status="cancelled")
            )
        retried = await _post(api, trigger_id, *sign_github(secret, listed[0]["delivery_id"], 0))
        assert retried.status_code == 202, retried.text


@pytest.mark.parametrize("outcome", ["rejected", "accepted"])
async def test_a_trigger_keeps_its_newest_thousand_deliveries_of_each_outcome(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, outcome: str
) -> None:
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
    now = datetime.now(UTC)
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            insert(TriggerDelivery),
            [
                {
                    "id": uuid.uuid4(),
                    "org_id": owner.org_id,
                    "trigger_id": uuid.UUID(trigger_id),
                    "status": outcome,
                    "reason": f"old {i}",
                    "created_at": now - timedelta(seconds=10 + i),
                }
                for i in range(1_005)
            ],
        )
    # A rejected delivery prunes every time; accepted ones once in ACCEPTED_PRUNE_EVERY writes.
    sent = 1 if outcome == "rejected" else ACCEPTED_PRUNE_EVERY
    for _ in range(sent):
        body, headers = sign_github(secret, _delivery("github"), 0)
        if outcome == "rejected":
            headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
        await _post(api, trigger_id, body, headers)

    async with system_transaction(queue_runtime.database) as db:
        reasons = list(
            (
                await db.execute(
                    select(TriggerDelivery.reason).where(
                        TriggerDelivery.trigger_id == trigger_id,
                        TriggerDelivery.status == outcome,
                    )
                )
            ).scalars()
        )
    old = {r for r in reasons if r is not None and r.startswith("old ")}
    assert len(reasons) - len(old) == sent  # the new ones are all kept
    # Pruned back to 1,000 once; at most the writes after that prune are beyond it.
    assert 1_000 <= len(reasons) <= 1_000 + sent - 1
    assert old == {f"old {i}" for i in range(len(old))}  # the newest old ones
    assert (await _deliveries(api, owner, trigger_id))[0]["reason"] == (
        "signature_mismatch" if outcome == "rejected" else None
    )


async def test_a_redis_flush_does_not_let_a_delivery_run_twice(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """The delivery id's key is in PostgreSQL. The queue tests' Redis is this test session's
    own (tests/workers.py), so flushing it harms no other process."""
    workflow_id = await _workflow(api, owner)
    trigger_id, secret = await _trigger(api, owner, workflow_id, "github")
    body, headers = sign_github(secret, _delivery("github"), 0)
    first = await _post(api, trigger_id, body, headers)
    assert first.status_code == 202, first.text

    await queue_runtime.redis.flushdb()

    again = await _post(api, trigger_id, body, headers)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    async with system_transaction(queue_runtime.database) as db:
        runs = await db.scalar(
            select(func.count())
            .select_from(WorkflowExecution)
            .where(WorkflowExecution.workflow_id == workflow_id)
        )
    assert runs == 1


async def test_sync_mode_answers_with_the_end_of_the_execution_or_202_after_its_timeout(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    counting_server: CountingServer,
) -> None:
    start_worker()
    quick = await _workflow(
        api,
        owner,
        steps=[{"id": "t", "type": "transform", "args": {"value": "hello {{ input.body.name }}"}}],
        output={"greeting": "{{ steps.t.output }}"},
    )
    failing = await _workflow(
        api,
        owner,
        steps=[
            {
                "id": "call",
                "type": "http",
                "args": {"url": counting_server.url(unique_key("sync"), fail=9, status=400)},
                "retry": {"max_attempts": 1},
            }
        ],
    )
    waiting = await _workflow(
        api, owner, steps=[{"id": "pause", "type": "wait", "args": {"for": "30s"}}]
    )
    sync = {"response": "sync", "sync_timeout_seconds": 10}
    quick_id, quick_secret = await _trigger(api, owner, quick, "token", **sync)
    failing_id, failing_secret = await _trigger(api, owner, failing, "token", **sync)
    waiting_id, waiting_secret = await _trigger(
        api, owner, waiting, "token", response="sync", sync_timeout_seconds=1
    )

    done = await _post(api, quick_id, _json({"name": "Ada"}), {"X-Taskloom-Token": quick_secret})
    assert done.status_code == 200, done.text
    execution_id = done.json()["execution_id"]
    assert done.json() == {
        "execution_id": execution_id,
        "status": "succeeded",
        "output": {"greeting": "hello Ada"},
        "error": None,
    }

    failed = await _post(api, failing_id, _json({}), {"X-Taskloom-Token": failing_secret})
    assert failed.status_code == 200, failed.text
    ended = await wait_for_status(api, owner, failed.json()["execution_id"])
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"] == {"code": ended["error"]["code"]}
    assert failed.json()["output"] is None

    began = time.monotonic()
    timed_out = await _post(api, waiting_id, _json({}), {"X-Taskloom-Token": waiting_secret})
    assert 1 <= time.monotonic() - began < 5
    assert timed_out.status_code == 202, timed_out.text
    assert set(timed_out.json()) == {"execution_id"}
    still = await api.get(
        f"/api/executions/{timed_out.json()['execution_id']}", headers=owner.headers
    )
    assert still.json()["status"] in ("queued", "running", "waiting")


SENDER_SECRETS: dict[str, Callable[[], str]] = {
    "stripe": lambda: "whsec_" + secrets.token_hex(16),  # Stripe's endpoint secrets: not base64
    "slack": lambda: secrets.token_hex(16),  # a Slack app's signing secret: 32 hex characters
    "standard": lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),  # Svix
}


@pytest.mark.parametrize("scheme", list(SENDER_SECRETS))
async def test_a_trigger_takes_the_senders_own_secret_on_create_and_rotation(
    api: httpx.AsyncClient, owner: Account, scheme: str
) -> None:
    """Stripe, Slack and Svix make their senders' secrets: the admin pastes it in."""
    workflow_id = await _workflow(api, owner)
    theirs = SENDER_SECRETS[scheme]()
    trigger_id, shown = await _trigger(api, owner, workflow_id, scheme, secret=theirs)
    assert shown == theirs
    body, headers = SIGNERS[scheme](theirs, _delivery(scheme), int(time.time()))
    assert (await _post(api, trigger_id, body, headers)).status_code == 202

    rotated_to = SENDER_SECRETS[scheme]()
    rotated = await api.post(
        f"/api/triggers/{trigger_id}/rotate-secret",
        json={"secret": rotated_to, "overlap_seconds": 3600},
        headers=owner.headers,
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] == rotated_to
    for secret in (rotated_to, theirs):  # the new one, and the old one during the overlap
        body, headers = SIGNERS[scheme](secret, _delivery(scheme), int(time.time()))
        assert (await _post(api, trigger_id, body, headers)).status_code == 202
    audit = await api.get(
        "/api/audit-logs",
        params={"action": "trigger.create", "scope": "org"},
        headers=owner.headers,
    )
    [details] = [e["details"] for e in audit.json()["items"] if e["resource_id"] == trigger_id]
    assert (details["verification"], details["secret_source"]) == (scheme, "sender")
    assert theirs not in audit.text


async def test_an_unusable_sender_secret_is_refused(api: httpx.AsyncClient, owner: Account) -> None:
    workflow_id = await _workflow(api, owner)
    for scheme, secret in (
        ("standard", "whsec_not-base64!!!!!!!!"),  # Standard Webhooks decodes it as base64
        ("standard", "no-prefix-" + "A" * 40),
        ("stripe", "short"),
        ("github", "tab\tinside-the-secret"),
    ):
        created = await api.post(
            f"/api/workflows/{workflow_id}/triggers",
            json={"kind": "webhook", "verification": scheme, "secret": secret},
            headers=owner.headers,
        )
        assert created.status_code == 422, (scheme, secret, created.text)
        assert "secret" in created.json()["error"]["message"], created.text
