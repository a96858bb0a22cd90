"""One organization's flood of webhook events cannot hold the delivery slots every organization
shares: the dispatcher hands at most WEBHOOK_MAX_QUEUED_PER_ORG of an organization's deliveries
to the queue at once (the rest wait in the outbox, oldest first), and an organization may have at
most WEBHOOK_MAX_ENDPOINTS_PER_ORG endpoints, since every event is written once per endpoint."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import httpx
from sqlalchemy import text

from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from taskloom.webhooks.delivery import dispatch_pending
from tests.factories import Account, register


async def _endpoint(client: httpx.AsyncClient, owner: Account) -> uuid.UUID:
    response = await client.post(
        "/api/webhooks",
        json={"url": "https://example.com/hook", "events": ["ping"]},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


async def _pending(
    runtime: Runtime, org_id: uuid.UUID, endpoint_id: uuid.UUID, n: int, *, oldest: int
) -> list[uuid.UUID]:
    """`n` outbox rows of one organization, one a second from `oldest` seconds ago."""
    ids = [uuid.uuid4() for _ in range(n)]
    async with system_transaction(runtime.database) as db:
        for i, delivery_id in enumerate(ids):
            await db.execute(
                text(
                    "insert into webhook_deliveries (id, org_id, endpoint_id, event_id, event_type,"
                    " attempt, status, payload, created_at) values (:id, :org, :ep, :ev, 'ping', 1,"
                    " 'pending', '{}'::jsonb, now() - make_interval(secs => :age))"
                ),
                {
                    "id": delivery_id,
                    "org": org_id,
                    "ep": endpoint_id,
                    "ev": uuid.uuid4(),
                    "age": oldest - i,
                },
            )
    return ids


async def _statuses(runtime: Runtime, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            text("select id, status from webhook_deliveries where id = any(:ids)"),
            {"ids": list(ids)},
        )
        return {row[0]: row[1] for row in rows}


async def test_a_flooding_organization_gets_its_allowance_and_a_quiet_one_is_not_kept_waiting(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    allowance = runtime.settings.webhook_max_queued_per_org
    flooder = await register(client, label="flood", organization_name="Flood Org")
    quiet = await register(client, label="quiet", organization_name="Quiet Org")
    flood_ids = await _pending(
        runtime, flooder.org_id, await _endpoint(client, flooder), 600, oldest=600
    )
    [quiet_id] = await _pending(runtime, quiet.org_id, await _endpoint(client, quiet), 1, oldest=0)

    await dispatch_pending(runtime)  # before the fix: the 500 oldest rows, all the flooder's

    statuses = await _statuses(runtime, [*flood_ids, quiet_id])
    assert statuses[quiet_id] == "queued"
    assert await runtime.queues["webhooks"].state(str(quiet_id)) == "waiting"
    queued = [i for i in flood_ids if statuses[i] == "queued"]
    assert queued == flood_ids[:allowance]  # oldest first

    await dispatch_pending(runtime)  # the allowance is used up: nothing more of the flooder's
    statuses = await _statuses(runtime, flood_ids)
    assert sum(s == "queued" for s in statuses.values()) == allowance

    async with system_transaction(runtime.database) as db:  # five deliveries finish
        await db.execute(
            text("update webhook_deliveries set status = 'succeeded' where id = any(:ids)"),
            {"ids": flood_ids[:5]},
        )
    await dispatch_pending(runtime)
    statuses = await _statuses(runtime, flood_ids)
    assert [i for i in flood_ids if statuses[i] == "queued"] == flood_ids[5 : allowance + 5]


async def test_an_organization_cannot_have_more_webhook_endpoints_than_allowed(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    limit = runtime.settings.webhook_max_endpoints_per_org
    owner = await register(client, label="many", organization_name="Many Hooks")
    for _ in range(limit - 3):
        await _endpoint(client, owner)

    async def create() -> httpx.Response:
        return await client.post(
            "/api/webhooks",
            json={"url": "https://example.com/hook", "events": ["ping"]},
            headers=owner.headers,
        )

    answers = await asyncio.gather(*(create() for _ in range(6)))  # concurrent: 3 fit
    assert sorted(a.status_code for a in answers) == [201, 201, 201, 409, 409, 409]
    refused = next(a for a in answers if a.status_code == 409).json()["error"]
    assert refused["code"] == "webhook_endpoint_limit"
    assert "WEBHOOK_MAX_ENDPOINTS_PER_ORG" in refused["message"]

    listed = await client.get("/api/webhooks", headers=owner.headers)
    assert len(listed.json()) == limit
    first = listed.json()[0]["id"]
    assert (await client.delete(f"/api/webhooks/{first}", headers=owner.headers)).status_code == 204
    assert (await create()).status_code == 201
