"""Execution retention: finished executions older than EXECUTION_RETENTION_DAYS go with their
steps and their events' webhook deliveries, their ai_usage rows summed per day first; queued and
running executions and recent ones stay. Seeded through the database with old timestamps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import text

from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.executions.retention import purge_some
from taskloom.jobs import UPKEEPS
from taskloom.queue.upkeep import Upkeeps
from taskloom.runtime import Runtime
from tests.cli_support import deployment_env, run_taskloom
from tests.factories import register

NOW = datetime.now(UTC)
DAY_A = (NOW - timedelta(days=100)).date()
DAY_B = (NOW - timedelta(days=120)).date()


@dataclass
class Seeded:
    org_id: uuid.UUID
    old: dict[str, uuid.UUID]  # status -> id: finished long ago
    kept: dict[str, uuid.UUID]  # what must stay: recent, queued, running


async def _seed(runtime: Runtime, client: httpx.AsyncClient) -> Seeded:
    owner = await register(client, label="retention")
    org, user = owner.org_id, owner.user_id
    workflow, endpoint = uuid.uuid4(), uuid.uuid4()
    ids = {name: uuid.uuid4() for name in ("old_ok", "old_failed", "old_cancelled", "recent")}
    ids |= {"queued": uuid.uuid4(), "running": uuid.uuid4()}
    finished = {
        "old_ok": NOW - timedelta(days=100),
        "old_failed": NOW - timedelta(days=120),
        "old_cancelled": NOW - timedelta(days=91),
        "recent": NOW - timedelta(days=10),
    }
    final = {"old_ok": "succeeded", "old_failed": "failed", "old_cancelled": "cancelled"}
    final["recent"] = "succeeded"
    async with system_transaction(runtime.database) as db:

        async def run(sql: str, **params: object) -> None:
            await db.execute(text(sql), params)

        await run(
            "insert into workflows (id, org_id, name, definition) "
            "values (:id, :org, 'retained', '{}')",
            id=workflow,
            org=org,
        )
        await run(
            "insert into webhook_endpoints (id, org_id, url, events, encrypted_secret) values "
            "(:id, :org, 'https://hooks.example.test/r', "
            '\'["execution.succeeded", "execution.failed", "execution.cancelled"]\', \'x\')',
            id=endpoint,
            org=org,
        )
        for name, execution in ids.items():
            status = "queued" if name == "queued" else "running"
            created = NOW - timedelta(days=200)
            await run(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version, "
                "definition, triggered_by, status, created_at, started_at) values "
                "(:id, :org, :wf, 1, '{}', :user, :status, :created, :started)",
                id=execution,
                org=org,
                wf=workflow,
                user=user,
                status=status,
                created=created,
                started=None if status == "queued" else created,
            )
            await run(
                "insert into execution_steps (id, org_id, execution_id, step_id, position, "
                "type, status) values (:id, :org, :ex, 's1', 0, 'http', 'succeeded')",
                id=uuid.uuid4(),
                org=org,
                ex=execution,
            )
        # Finishing fires the webhook trigger: one delivery per execution event.
        for name, status in final.items():
            await run(
                "update workflow_executions set status = :status, finished_at = :at where id = :id",
                status=status,
                at=finished[name],
                id=ids[name],
            )
        # The recent execution re-runs the old one (a re-run outlives what it re-ran).
        await run(
            "update workflow_executions set retry_of = :old where id = :recent",
            old=ids["old_ok"],
            recent=ids["recent"],
        )
        # Sent deliveries, one with a second attempt (no payload, the same event); the old
        # cancelled execution's delivery is still pending, and stays.
        await run(
            "update webhook_deliveries set status = 'succeeded' where endpoint_id = :e "
            "and payload -> 'data' ->> 'execution_id' <> :cancelled",
            e=endpoint,
            cancelled=str(ids["old_cancelled"]),
        )
        await run(
            "insert into webhook_deliveries (id, org_id, endpoint_id, event_id, event_type, "
            "attempt, status) select gen_random_uuid(), org_id, endpoint_id, event_id, "
            "event_type, 2, 'failed' from webhook_deliveries "
            "where payload -> 'data' ->> 'execution_id' = :ex",
            ex=str(ids["old_failed"]),
        )

        async def usage(
            execution: uuid.UUID | None, at: datetime, model: str, cost: str, outcome: str = "ok"
        ) -> None:
            await run(
                "insert into ai_usage (id, org_id, user_id, execution_id, provider, model, "
                "input_tokens, output_tokens, cost_usd, outcome, created_at) values "
                "(gen_random_uuid(), :org, :user, :ex, 'anthropic', :model, 100, 10, :cost, "
                ":outcome, :at)",
                org=org,
                user=user,
                ex=execution,
                model=model,
                cost=Decimal(cost),
                outcome=outcome,
                at=at,
            )

        day_a = NOW - timedelta(days=100)
        await usage(ids["old_ok"], day_a, "claude-a", "0.5")
        await usage(ids["old_ok"], day_a, "claude-a", "0.25")
        await usage(ids["old_ok"], day_a, "claude-b", "1")
        await usage(ids["old_ok"], day_a, "claude-a", "9", outcome="pending")  # in flight: stays
        await usage(ids["old_failed"], NOW - timedelta(days=120), "claude-a", "2")
        await usage(None, day_a, "claude-a", "0.125")  # its workflow was deleted long ago
        await usage(ids["recent"], NOW - timedelta(days=10), "claude-a", "3")
        await usage(ids["running"], NOW - timedelta(days=200), "claude-a", "4")
        await usage(None, NOW - timedelta(days=5), "claude-a", "5")
        # An earlier purge already summed a call of that day and model: the sums add up.
        await run(
            "insert into ai_usage_daily (id, org_id, day, provider, model, calls, input_tokens, "
            "output_tokens, cost_usd) values (gen_random_uuid(), :org, :day, 'anthropic', "
            "'claude-a', 1, 100, 10, 1)",
            org=org,
            day=DAY_A,
        )
    old = {k: v for k, v in ids.items() if k.startswith("old")}
    kept = {k: v for k, v in ids.items() if not k.startswith("old")}
    return Seeded(org_id=org, old=old, kept=kept)


async def _left(runtime: Runtime, org: uuid.UUID) -> dict[str, object]:
    async with system_transaction(runtime.database) as db:

        async def scalar(sql: str) -> object:
            return (await db.execute(text(sql), {"org": org})).scalar_one()

        executions = (
            await db.execute(
                text("select id from workflow_executions where org_id = :org"), {"org": org}
            )
        ).scalars()
        daily = (
            await db.execute(
                text(
                    "select day, model, calls, input_tokens, output_tokens, cost_usd "
                    "from ai_usage_daily where org_id = :org order by day, model"
                ),
                {"org": org},
            )
        ).all()
        return {
            "executions": set(executions),
            "steps": await scalar("select count(*) from execution_steps where org_id = :org"),
            "deliveries": await scalar(
                "select count(*) from webhook_deliveries where org_id = :org"
            ),
            "usage": await scalar(
                "select coalesce(sum(cost_usd), 0) from ai_usage where org_id = :org"
            ),
            "daily": [tuple(row) for row in daily],
        }


async def _retry_of(runtime: Runtime, execution_id: uuid.UUID) -> uuid.UUID | None:
    async with system_transaction(runtime.database) as db:
        link: uuid.UUID | None = await db.scalar(
            text("select retry_of from workflow_executions where id = :id"), {"id": execution_id}
        )
    return link


async def test_purge_deletes_old_finished_executions_and_keeps_the_rest(
    settings: Settings, runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    seeded = await _seed(runtime, client)
    before = await _left(runtime, seeded.org_id)
    env = deployment_env(settings)

    preview = await run_taskloom("purge", "--dry-run", env=env, cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert "would delete" in preview.stdout
    assert await _left(runtime, seeded.org_id) == before  # a dry run changes nothing
    counts = _counts(preview.stdout)
    # Other tests' rows may be old too (never ours to count exactly): at least ours.
    assert counts["workflow_executions"] >= 3
    assert counts["execution_steps"] >= 3
    assert counts["webhook_deliveries"] >= 3  # two first attempts and a retry
    assert counts["ai_usage"] >= 5  # four finished calls and the old orphan

    assert await _retry_of(runtime, seeded.kept["recent"]) == seeded.old["old_ok"]
    purged = await run_taskloom("purge", env=env, cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert _counts(purged.stdout)["workflow_executions"] == counts["workflow_executions"]

    after = await _left(runtime, seeded.org_id)
    assert after["executions"] == set(seeded.kept.values())
    assert await _retry_of(runtime, seeded.kept["recent"]) is None  # stays, unlinked
    assert after["steps"] == 3
    assert after["deliveries"] == 2  # the recent execution's, and the old pending one
    # Left: the pending call (9), the recent (3), the running execution's (4), the new orphan (5).
    assert after["usage"] == Decimal("21")
    assert after["daily"] == [
        (DAY_B, "claude-a", 1, 100, 10, Decimal("2")),
        (DAY_A, "claude-a", 4, 400, 40, Decimal("1.875")),  # 1 summed before + 0.5, 0.25, 0.125
        (DAY_A, "claude-b", 1, 100, 10, Decimal("1")),
    ]

    again = await run_taskloom("purge", "--dry-run", env=env, cwd=tmp_path)
    assert _counts(again.stdout)["workflow_executions"] == 0


async def test_the_workers_housekeeping_purges_expired_executions(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    seeded = await _seed(runtime, client)
    await Upkeeps(runtime, UPKEEPS, owner="test").tick()  # the leader's upkeep, once
    after = await _left(runtime, seeded.org_id)
    assert after["executions"] == set(seeded.kept.values())


def _counts(output: str) -> dict[str, int]:
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


async def test_the_usage_report_counts_calls_already_summed_per_day(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """With a retention shorter than a month, this month's calls may be in ai_usage_daily."""
    owner = await register(client, label="rolledup")
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text(
                "insert into ai_usage (id, org_id, provider, model, input_tokens, output_tokens,"
                " cost_usd, outcome) values (gen_random_uuid(), :org, 'anthropic', 'claude-a',"
                " 7, 3, 0.5, 'ok')"
            ),
            {"org": owner.org_id},
        )
        await db.execute(
            text(
                "insert into ai_usage_daily (id, org_id, day, provider, model, calls, "
                "input_tokens, output_tokens, cost_usd) values (gen_random_uuid(), :org, "
                "(now() at time zone 'UTC')::date, 'anthropic', 'claude-a', 2, 20, 4, 1.25)"
            ),
            {"org": owner.org_id},
        )
    report = await client.get("/api/ai/usage", headers=owner.headers)
    assert report.status_code == 200, report.text
    assert report.json()["models"] == [
        {
            "model": "claude-a",
            "calls": 3,
            "input_tokens": 27,
            "output_tokens": 7,
            "cost_usd": "1.750000",
        }
    ]


async def test_one_tick_of_housekeeping_purges_more_than_a_few_batches(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A tick deletes for up to SECONDS_PER_TICK, not a fixed 4 batches (2,000 executions a
    30 s tick could not keep up with more than 67 executions/s: docs/SCALING.md)."""
    owner = await register(client, label="retention-bulk")
    workflow = uuid.uuid4()
    old = NOW - timedelta(days=200)
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text(
                "insert into workflows (id, org_id, name, definition) "
                "values (:id, :org, 'bulk', '{}')"
            ),
            {"id": workflow, "org": owner.org_id},
        )
        await db.execute(
            text(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version, "
                "definition, status, created_at, started_at, finished_at) "
                "select gen_random_uuid(), :org, :wf, 1, '{}', 'succeeded', :at, :at, :at "
                "from generate_series(1, 2600)"
            ),
            {"org": owner.org_id, "wf": workflow, "at": old},
        )
    await purge_some(runtime)
    async with system_transaction(runtime.database) as db:
        left = await db.scalar(
            text("select count(*) from workflow_executions where org_id = :org"),
            {"org": owner.org_id},
        )
    assert left == 0
