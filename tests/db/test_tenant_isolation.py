"""Tenant isolation is enforced by PostgreSQL itself, not by the application's queries.

Two organizations, A and B, are seeded through the privileged (system) engine, each with an owner,
a second member and at least one row in every isolated table. Connected as the application role,
table by table:

- without a tenant nothing at all is visible (fail closed);
- acting for A (org A and A's owner set with `set_tenant`), A's rows are visible and B's are not;
  B's rows can be neither inserted, changed nor deleted, and A's rows cannot be moved into B;
- the tenant setting ends with its transaction, so a pooled connection never leaks it.

The catalog is checked too (every table is isolated and FORCEd, or declared shared), and so is the
application role itself (no superuser, no BYPASSRLS, owns nothing, cannot rewrite `audit_logs`,
`workflow_versions` or `alembic_version`).

The test database is shared by the whole test session, so rows are always counted among the ids
seeded here, except where "no tenant" must mean "no rows at all".
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from taskloom.config import Settings
from taskloom.db.migrate import head_revision
from taskloom.db.rls import AppAccess, isolated_tables, shared_tables, tables_with_access
from taskloom.db.tenancy import set_tenant
from taskloom.models import metadata
from taskloom.runtime import Runtime

INSUFFICIENT_PRIVILEGE = "42501"

# Every isolated table, parents before children: the order rows are seeded in.
SEED_ORDER = (
    "organizations",
    "users",
    "memberships",
    "invitations",
    "sessions",
    "refresh_tokens",
    "api_keys",
    "gdpr_requests",
    "sso_identities",
    "sso_sessions",
    "workflows",
    "workflow_versions",
    "workflow_executions",
    "execution_steps",
    "execution_step_items",
    "execution_agent_turns",
    "execution_approvals",
    "idempotency_keys",
    "workflow_schedules",
    "schedule_ticks",
    "workflow_triggers",
    "trigger_deliveries",
    "ai_usage",
    "ai_usage_daily",
    "ai_budget_months",
    "ai_workflow_budget_months",
    "tool_connections",
    "org_secrets",
    "webhook_endpoints",
    "webhook_deliveries",
    "feature_flag_overrides",
    "audit_logs",
    "audit_chain_heads",
)

# Rows that belong to one person; a co-member of the same organization must not see them.
PERSONAL_TABLES = (
    "sessions",
    "refresh_tokens",
    "api_keys",
    "gdpr_requests",
    "sso_identities",
    "sso_sessions",
)

# The column that says whose a row is, for tables where a row could be "moved" to another tenant.
# (organizations and users are scoped by their own id; audit_logs cannot be updated at all.)
OWNER_COLUMN = {
    "memberships": "org_id",
    "invitations": "org_id",
    "sessions": "user_id",
    "refresh_tokens": "user_id",
    "api_keys": "user_id",
    "gdpr_requests": "user_id",
    "sso_identities": "user_id",
    "sso_sessions": "user_id",
    "workflows": "org_id",
    "workflow_executions": "org_id",
    "execution_steps": "org_id",
    "execution_step_items": "org_id",
    "execution_agent_turns": "org_id",
    "execution_approvals": "org_id",
    "idempotency_keys": "org_id",
    "workflow_schedules": "org_id",
    "schedule_ticks": "org_id",
    "workflow_triggers": "org_id",
    "trigger_deliveries": "org_id",
    "ai_usage": "org_id",
    "ai_usage_daily": "org_id",
    "ai_budget_months": "org_id",
    "ai_workflow_budget_months": "org_id",
    "tool_connections": "org_id",
    "org_secrets": "org_id",
    "webhook_endpoints": "org_id",
    "webhook_deliveries": "org_id",
    "feature_flag_overrides": "org_id",
    "audit_chain_heads": "org_id",
}

ISOLATED_TABLES = isolated_tables(metadata)  # declared on the models (db/rls.py)
# Tables the application role may not update or delete at all (tested on their own below).
APPEND_ONLY = frozenset(tables_with_access(metadata, AppAccess.APPEND_ONLY))
SHARED_TABLES = shared_tables(metadata)
TABLES = sorted(ISOLATED_TABLES)


@dataclass(frozen=True)
class Side:
    """One seeded organization: its owner, a second member, and the ids that rows refer to."""

    label: str
    org_id: uuid.UUID
    user_id: uuid.UUID
    co_member_id: uuid.UUID
    flag_id: uuid.UUID
    provider_id: uuid.UUID
    session_id: uuid.UUID = field(default_factory=uuid.uuid4)
    identity_id: uuid.UUID = field(default_factory=uuid.uuid4)
    workflow_id: uuid.UUID = field(default_factory=uuid.uuid4)
    execution_id: uuid.UUID = field(default_factory=uuid.uuid4)
    endpoint_id: uuid.UUID = field(default_factory=uuid.uuid4)
    schedule_id: uuid.UUID = field(default_factory=uuid.uuid4)
    trigger_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def as_co_member(self) -> Side:
        """The same organization seen from its second member (with a session of their own)."""
        return replace(
            self,
            label=f"{self.label} co-member",
            user_id=self.co_member_id,
            session_id=uuid.uuid4(),
            identity_id=uuid.uuid4(),
        )


@dataclass
class Seed:
    a: Side
    b: Side
    flag_id: uuid.UUID
    # table -> label ("A", "B", "A co-member", ...) -> ids of the rows seeded for it
    rows: dict[str, dict[str, list[uuid.UUID]]]

    def ids(self, table: str, label: str) -> list[uuid.UUID]:
        return self.rows[table].get(label, [])


def row_for(
    table: str, side: Side, *, fresh: bool = False, member: uuid.UUID | None = None
) -> dict[str, Any]:
    """Values for a new row of `table` belonging to `side` (its organization and its user).

    Rows that others refer to (sessions, workflows, executions, webhook endpoints) take the id
    `side` names for them unless `fresh`; an organization's id is `side.org_id` and a user's id is
    `side.user_id`. A membership makes `member` (default: the side's user) a member of the org.
    """
    tag = secrets.token_hex(6)
    tomorrow = datetime.now(UTC) + timedelta(days=1)

    def preset(value: uuid.UUID) -> uuid.UUID:
        return uuid.uuid4() if fresh else value

    match table:
        case "organizations":
            return {"id": side.org_id, "name": f"Isolation {side.label}", "slug": f"iso-{tag}"}
        case "users":
            return {
                "id": side.user_id,
                "email": f"iso-{tag}@example.test",
                "display_name": f"Isolation {side.label}",
            }
        case "memberships":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "user_id": member or side.user_id,
                "role": "member",
            }
        case "invitations":
            # To an address nobody seeded has: who else may read it is tested on its own below.
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "email": f"invitee-{tag}@example.test",
                "role": "member",
                "invited_by": side.user_id,
                "expires_at": tomorrow,
            }
        case "sessions":
            return {
                "id": preset(side.session_id),
                "user_id": side.user_id,
                "org_id": side.org_id,
                "ip": "198.51.100.7",
                "user_agent": "isolation-test",
                "expires_at": tomorrow,
            }
        case "refresh_tokens":
            return {
                "id": uuid.uuid4(),
                "session_id": side.session_id,
                "user_id": side.user_id,
                "token_hash": secrets.token_hex(32),
                "expires_at": tomorrow,
            }
        case "api_keys":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "user_id": side.user_id,
                "name": "isolation",
                "prefix": f"tl_{tag}",
                "key_hash": secrets.token_hex(32),
                "role": "member",
            }
        case "gdpr_requests":
            return {
                "id": uuid.uuid4(),
                "user_id": side.user_id,
                "kind": "export",
                "status": "completed",
            }
        case "sso_identities":
            return {
                "id": preset(side.identity_id),
                "provider_id": side.provider_id,
                "subject": f"sub-{tag}",
                "user_id": side.user_id,
                "email": f"iso-{tag}@example.test",
            }
        case "sso_sessions":
            return {
                "id": uuid.uuid4(),
                "session_id": side.session_id,
                "user_id": side.user_id,
                "provider_id": side.provider_id,
                "identity_id": side.identity_id,
                "tokens_key_id": "isolation",
                "tokens_encrypted": b"sealed",
            }
        case "workflows":
            return {
                "id": preset(side.workflow_id),
                "org_id": side.org_id,
                "name": f"wf-{tag}",
                "definition": {"steps": []},
                "created_by": side.user_id,
            }
        case "workflow_versions":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "number": secrets.randbelow(10**9) + 1,
                "name": f"wf-{tag}",
                "definition": {"steps": []},
                "created_by": side.user_id,
            }
        case "workflow_executions":
            return {
                "id": preset(side.execution_id),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "workflow_version": 1,
                "definition": {"steps": []},
                "triggered_by": side.user_id,
                "status": "queued",
            }
        case "execution_steps":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "execution_id": side.execution_id,
                "step_id": f"step-{tag}",
                "position": 0,
                "type": "http",
                "status": "pending",
            }
        case "execution_step_items":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "execution_id": side.execution_id,
                "step_id": f"step-{tag}",
                "item_index": 0,
                "status": "pending",
            }
        case "execution_agent_turns":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "execution_id": side.execution_id,
                "step_id": f"step-{tag}",
                "turn": 1,
                "call_index": 0,
                "kind": "model",
                "status": "succeeded",
            }
        case "execution_approvals":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "execution_id": side.execution_id,
                "step_id": f"step-{tag}",
                "approvers": {"role": "admin"},
                "status": "approved",
                "decided_by": side.user_id,
                "comment": "looks right",
                "timeout_at": datetime.now(UTC) + timedelta(hours=1),
            }
        case "idempotency_keys":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "key": f"key-{tag}",
                "request_hash": "0" * 64,
                "execution_id": side.execution_id,
            }
        case "workflow_schedules":
            return {
                "id": preset(side.schedule_id),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "cron": "*/5 * * * *",
                "timezone": "Europe/Berlin",
                "next_tick_at": tomorrow,
                "created_by": side.user_id,
            }
        case "schedule_ticks":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "schedule_id": side.schedule_id,
                "tick_at": datetime.now(UTC) - timedelta(seconds=secrets.randbelow(10**6)),
                "status": "started",
                "execution_id": side.execution_id,
            }
        case "workflow_triggers":
            return {
                "id": preset(side.trigger_id),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "kind": "webhook",
                "verification": "token",
                "response": "async",
                "encrypted_secret": b"not-a-real-ciphertext",
                "created_by": side.user_id,
            }
        case "trigger_deliveries":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "trigger_id": side.trigger_id,
                "status": "accepted",
                "delivery_id": f"delivery-{tag}",
                "execution_id": side.execution_id,
            }
        case "ai_usage":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "user_id": side.user_id,
                "execution_id": side.execution_id,
                "provider": "anthropic",
                "model": "claude-test",
                "input_tokens": 10,
                "output_tokens": 5,
                "outcome": "ok",
            }
        case "ai_usage_daily":
            # One row per organization, day, provider and model: a fresh row takes a day.
            day = date(2000 + secrets.randbelow(900), 1 + secrets.randbelow(12), 1)
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "day": day,
                "provider": "anthropic",
                "model": "claude-test",
                "calls": 2,
            }
        case "ai_budget_months":
            # One row per organization and month: a fresh row takes a month of its own.
            month = date(2000 + secrets.randbelow(900), 1 + secrets.randbelow(12), 1)
            return {"id": uuid.uuid4(), "org_id": side.org_id, "month": month}
        case "ai_workflow_budget_months":
            # One row per workflow and month: a fresh row takes a month of its own.
            month = date(2000 + secrets.randbelow(900), 1 + secrets.randbelow(12), 1)
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "workflow_id": side.workflow_id,
                "month": month,
            }
        case "tool_connections":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "provider": "github",
                "name": f"github-{tag}",
                "created_by": side.user_id,
            }
        case "org_secrets":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "name": f"SEED_{tag.upper().replace('-', '_')}",
                "key_id": "k",
                "encrypted_value": b"\x01sealed",
                "created_by": side.user_id,
            }
        case "webhook_endpoints":
            return {
                "id": preset(side.endpoint_id),
                "org_id": side.org_id,
                "url": f"https://hooks.example.test/{tag}",
                "encrypted_secret": b"not-a-real-ciphertext",
                "created_by": side.user_id,
            }
        case "webhook_deliveries":
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "endpoint_id": side.endpoint_id,
                "event_id": uuid.uuid4(),
                "event_type": "execution.succeeded",
                "attempt": 1,
                "status": "delivered",
            }
        case "feature_flag_overrides":
            return {
                "id": uuid.uuid4(),
                "flag_id": side.flag_id,
                "org_id": side.org_id,
                "user_id": None,
                "enabled": True,
                "created_by": side.user_id,
            }
        case "audit_logs":
            # Only visibility is tested here, so the hashes are dummies.
            return {
                "id": uuid.uuid4(),
                "org_id": side.org_id,
                "seq": secrets.randbelow(10**12) + 1,
                "actor_user_id": side.user_id,
                "action": "test.isolation",
                "success": True,
                "content_digest": secrets.token_hex(32),
                "prev_hash": "0" * 64,
                "hash": secrets.token_hex(32),
            }
        case "audit_chain_heads":
            return {
                "id": uuid.uuid4(),
                "chain": f"isolation-{tag}-{secrets.token_hex(4)}",
                "org_id": side.org_id,
                "last_seq": 1,
                "last_hash": secrets.token_hex(32),
            }
    raise LookupError(f"no row builder for table {table!r}: add one to row_for()")


async def _insert(conn: AsyncConnection, table: str, row: dict[str, Any]) -> uuid.UUID:
    await conn.execute(insert(metadata.tables[table]).values(row))
    return row["id"]


async def _seed_side(conn: AsyncConnection, side: Side) -> dict[str, dict[str, list[uuid.UUID]]]:
    """Insert one organization's rows; returns table -> label -> ids."""
    rows: dict[str, dict[str, list[uuid.UUID]]] = {t: {} for t in SEED_ORDER}
    co_member = side.as_co_member()

    def add(table: str, label: str, row_id: uuid.UUID) -> None:
        rows[table].setdefault(label, []).append(row_id)

    for table in SEED_ORDER:
        add(table, side.label, await _insert(conn, table, row_for(table, side)))
        if table == "users":
            add(table, side.label, await _insert(conn, table, row_for(table, co_member)))
        if table == "memberships":
            member_row = row_for(table, side, member=side.co_member_id)
            add(table, side.label, await _insert(conn, table, member_row))
        if table in PERSONAL_TABLES:
            add(table, co_member.label, await _insert(conn, table, row_for(table, co_member)))
        if table == "feature_flag_overrides":
            # A user-scoped override (no org): visible to that user only.
            personal = {**row_for(table, side), "org_id": None, "user_id": side.user_id}
            add(table, side.label, await _insert(conn, table, personal))
    return rows


@pytest.fixture(scope="module")
async def seed(runtime: Runtime) -> AsyncIterator[Seed]:
    """Organizations A and B with rows in every table, inserted by the privileged engine."""
    flag_id, provider_id = uuid.uuid4(), uuid.uuid4()
    a, b = (
        Side(
            label=label,
            org_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            co_member_id=uuid.uuid4(),
            flag_id=flag_id,
            provider_id=provider_id,
        )
        for label in ("A", "B")
    )
    rows: dict[str, dict[str, list[uuid.UUID]]] = {t: {} for t in SEED_ORDER}
    system = runtime.database.system_engine
    async with system.begin() as conn:
        await conn.execute(
            insert(metadata.tables["feature_flags"]).values(
                id=flag_id, key=f"isolation-{secrets.token_hex(6)}", description="shared flag"
            )
        )
        await conn.execute(
            insert(metadata.tables["sso_providers"]).values(
                id=provider_id,
                slug=f"iso-{secrets.token_hex(6)}",
                display_name="Isolation IdP",
                issuer="https://idp.example.test",
                client_id="isolation",
                secret_key_id="isolation",
                secret_encrypted=b"sealed",
                scopes=["openid"],
                algorithms=["RS256"],
            )
        )
        for side in (a, b):
            for table, by_label in (await _seed_side(conn, side)).items():
                rows[table].update(by_label)
    yield Seed(a=a, b=b, flag_id=flag_id, rows=rows)

    users = [a.user_id, a.co_member_id, b.user_id, b.co_member_id]
    async with system.begin() as conn:
        # gdpr_requests keep their rows when a user goes (user_id is set to NULL): remove first.
        await conn.execute(text("delete from gdpr_requests where user_id = any(:u)"), {"u": users})
        await conn.execute(
            text("delete from organizations where id = any(:o)"), {"o": [a.org_id, b.org_id]}
        )
        await conn.execute(text("delete from users where id = any(:u)"), {"u": users})
        await conn.execute(text("delete from feature_flags where id = :f"), {"f": flag_id})
        await conn.execute(text("delete from sso_providers where id = :p"), {"p": provider_id})


# --- helpers ----------------------------------------------------------------------------------


async def scope_to(
    conn: AsyncConnection, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> None:
    """`set_tenant` on a bare connection (it only calls `.execute`), so that a test can keep one
    server connection across several transactions."""
    await set_tenant(conn, org_id=org_id, user_id=user_id)


@asynccontextmanager
async def acting_as(
    runtime: Runtime, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> AsyncIterator[AsyncConnection]:
    """A transaction of the application role scoped with `set_tenant`; always rolled back."""
    async with runtime.database.app_engine.connect() as conn:
        await conn.begin()
        try:
            await scope_to(conn, org_id=org_id, user_id=user_id)
            yield conn
        finally:
            await conn.rollback()


async def visible_ids(conn: AsyncConnection, table: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `ids` the connection can see in `table`."""
    result = await conn.execute(text(f"select id from {table} where id = any(:ids)"), {"ids": ids})
    return set(result.scalars())


async def rejected(
    runtime: Runtime,
    statement: Any,
    params: dict[str, Any] | None = None,
    *,
    org_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> DBAPIError:
    """Run one statement as the application role (in a transaction that is always rolled back)
    and return the database error it raised; the test fails if the statement succeeded."""
    async with acting_as(runtime, org_id=org_id, user_id=user_id) as conn:
        with pytest.raises(DBAPIError) as caught:
            await conn.execute(statement, params or {})
    return caught.value


def sqlstate(error: DBAPIError) -> str | None:
    """The PostgreSQL SQLSTATE of an error raised through SQLAlchemy's asyncpg adapter."""
    return getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)


def assert_rls_violation(error: DBAPIError) -> None:
    assert sqlstate(error) == INSUFFICIENT_PRIVILEGE, error
    assert "row-level security" in str(error.orig), error


def assert_permission_denied(error: DBAPIError) -> None:
    assert sqlstate(error) == INSUFFICIENT_PRIVILEGE, error
    assert "permission denied" in str(error.orig), error


# --- the seed itself --------------------------------------------------------------------------


def test_this_module_seeds_every_isolated_table() -> None:
    assert set(SEED_ORDER) == set(ISOLATED_TABLES)


# --- no tenant: no rows -----------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
async def test_app_role_sees_no_rows_without_a_tenant(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    seeded = seed.ids(table, "A") + seed.ids(table, "B")
    async with runtime.database.system_engine.connect() as conn:
        assert await visible_ids(conn, table, seeded) == set(seeded)

    async with runtime.database.app_engine.connect() as conn:
        count = (await conn.execute(text(f"select count(*) from {table}"))).scalar_one()
    assert count == 0


@pytest.mark.parametrize("table", TABLES)
async def test_app_role_sees_no_rows_with_an_empty_tenant(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    async with acting_as(runtime, org_id=None, user_id=None) as conn:
        count = (await conn.execute(text(f"select count(*) from {table}"))).scalar_one()
    assert count == 0


# --- acting for A -----------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
async def test_a_tenant_sees_its_own_rows_and_none_of_another_organization(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    for me, other in ((seed.a, seed.b), (seed.b, seed.a)):
        mine, theirs = seed.ids(table, me.label), seed.ids(table, other.label)
        assert mine, f"{table} was not seeded for {me.label}"
        assert theirs, f"{table} was not seeded for {other.label}"
        async with acting_as(runtime, org_id=me.org_id, user_id=me.user_id) as conn:
            assert await visible_ids(conn, table, mine) == set(mine)
            assert await visible_ids(conn, table, theirs) == set()


@pytest.mark.parametrize("table", PERSONAL_TABLES)
async def test_personal_rows_of_a_co_member_are_invisible(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    theirs = seed.ids(table, "A co-member")
    assert theirs
    async with acting_as(runtime, org_id=seed.a.org_id, user_id=seed.a.user_id) as conn:
        assert await visible_ids(conn, table, theirs) == set()


@pytest.mark.parametrize("table", TABLES)
async def test_app_role_cannot_insert_a_row_of_another_organization(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    # B's row; for organizations and users a new one (id != the tenant's), and for memberships
    # A's own user trying to join org B.
    owner = seed.b
    if table == "organizations":
        owner = replace(seed.b, org_id=uuid.uuid4())
    if table == "users":
        owner = replace(seed.b, user_id=uuid.uuid4())
    row = row_for(table, owner, fresh=True, member=seed.a.user_id)

    error = await rejected(
        runtime,
        insert(metadata.tables[table]).values(row),
        org_id=seed.a.org_id,
        user_id=seed.a.user_id,
    )
    assert_rls_violation(error)


@pytest.mark.parametrize("table", TABLES)
async def test_app_role_may_insert_a_row_of_its_own_tenant(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    """The control for the test above: the same kind of row, owned by the tenant, is accepted
    (and rolled back), so the rejection above is row-level security and nothing else."""
    me = seed.a
    if table == "organizations":  # a new organization may be created while acting in it
        me = replace(seed.a, org_id=uuid.uuid4())
    if table == "users":  # and a new user while acting as that user (sign-up)
        me = replace(seed.a, user_id=uuid.uuid4())
    row = row_for(table, me, fresh=True, member=seed.b.user_id)

    async with acting_as(runtime, org_id=me.org_id, user_id=me.user_id) as conn:
        await conn.execute(insert(metadata.tables[table]).values(row))
        assert await visible_ids(conn, table, [row["id"]]) == {row["id"]}


@pytest.mark.parametrize("table", [t for t in TABLES if t not in APPEND_ONLY])
async def test_app_role_cannot_change_or_delete_rows_of_another_organization(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    theirs = seed.ids(table, "B")
    async with acting_as(runtime, org_id=seed.a.org_id, user_id=seed.a.user_id) as conn:
        update = text(f"update {table} set id = id where id = any(:ids)")
        assert (await conn.execute(update, {"ids": theirs})).rowcount == 0
        delete = text(f"delete from {table} where id = any(:ids)")
        assert (await conn.execute(delete, {"ids": theirs})).rowcount == 0

    async with runtime.database.system_engine.connect() as conn:
        assert await visible_ids(conn, table, theirs) == set(theirs)


@pytest.mark.parametrize("table", sorted(OWNER_COLUMN))
async def test_app_role_cannot_move_its_rows_into_another_organization(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    column = OWNER_COLUMN[table]
    new_owner = seed.b.org_id if column == "org_id" else seed.b.user_id
    error = await rejected(
        runtime,
        text(f"update {table} set {column} = :owner where id = any(:ids)"),
        {"owner": new_owner, "ids": seed.ids(table, "A")},
        org_id=seed.a.org_id,
        user_id=seed.a.user_id,
    )
    assert_rls_violation(error)


# --- the tenant setting is transaction-local --------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
async def test_tenant_setting_ends_with_its_transaction(
    runtime: Runtime, seed: Seed, table: str
) -> None:
    mine = seed.ids(table, "A")
    pid = text("select pg_backend_pid()")
    async with runtime.database.app_engine.connect() as conn:
        async with conn.begin():
            await scope_to(conn, org_id=seed.a.org_id, user_id=seed.a.user_id)
            backend = (await conn.execute(pid)).scalar_one()
            assert await visible_ids(conn, table, mine) == set(mine)
        # committed; the next transaction on the very same server connection sees nothing
        async with conn.begin():
            assert (await conn.execute(pid)).scalar_one() == backend
            count = (await conn.execute(text(f"select count(*) from {table}"))).scalar_one()
            assert count == 0


async def test_tenant_setting_ends_with_a_rolled_back_transaction_too(
    runtime: Runtime, seed: Seed
) -> None:
    setting = text(
        "select current_setting('app.org_id', true), current_setting('app.user_id', true)"
    )
    async with runtime.database.app_engine.connect() as conn:
        async with conn.begin() as transaction:
            await scope_to(conn, org_id=seed.a.org_id, user_id=seed.a.user_id)
            assert tuple((await conn.execute(setting)).one()) == (
                str(seed.a.org_id),
                str(seed.a.user_id),
            )
            await transaction.rollback()
        async with conn.begin():
            org, user = (await conn.execute(setting)).one()
            assert not org
            assert not user
            count = (await conn.execute(text("select count(*) from workflows"))).scalar_one()
            assert count == 0


# --- users: yourself and your co-members, nobody else -----------------------------------------


async def test_a_user_sees_themselves_and_their_co_members(runtime: Runtime, seed: Seed) -> None:
    a = seed.a
    async with acting_as(runtime, org_id=a.org_id, user_id=a.user_id) as conn:
        assert await visible_ids(conn, "users", [a.user_id, a.co_member_id]) == {
            a.user_id,
            a.co_member_id,
        }


async def test_users_of_another_organization_are_invisible(runtime: Runtime, seed: Seed) -> None:
    a, b = seed.a, seed.b
    async with acting_as(runtime, org_id=a.org_id, user_id=a.user_id) as conn:
        assert await visible_ids(conn, "users", [b.user_id, b.co_member_id]) == set()
        b_email = await _email_of(runtime, b.user_id)
        by_email = text("select count(*) from users where lower(email) = lower(:e)")
        assert (await conn.execute(by_email, {"e": b_email})).scalar_one() == 0


async def test_a_user_without_an_organization_sees_only_themselves(
    runtime: Runtime, seed: Seed
) -> None:
    a = seed.a
    everyone = [a.user_id, a.co_member_id, seed.b.user_id, seed.b.co_member_id]
    async with acting_as(runtime, org_id=None, user_id=a.user_id) as conn:
        assert await visible_ids(conn, "users", everyone) == {a.user_id}


async def test_an_organization_without_a_user_sees_only_its_members(
    runtime: Runtime, seed: Seed
) -> None:
    a = seed.a
    everyone = [a.user_id, a.co_member_id, seed.b.user_id, seed.b.co_member_id]
    async with acting_as(runtime, org_id=a.org_id, user_id=None) as conn:
        assert await visible_ids(conn, "users", everyone) == {a.user_id, a.co_member_id}


async def _email_of(runtime: Runtime, user_id: uuid.UUID) -> str:
    async with runtime.database.system_engine.connect() as conn:
        query = text("select email from users where id = :id")
        return str((await conn.execute(query, {"id": user_id})).scalar_one())


# --- invitations: the invited person reads theirs, and nothing else of the organization ------


async def test_an_invitee_reads_an_invitation_to_their_email_but_cannot_change_it(
    runtime: Runtime, seed: Seed
) -> None:
    """B invites A's owner. Acting in A (or in no organization), A's owner sees that invitation
    and no other of B's, cannot update or delete it (only the organization writes), and sees
    nothing else of B: not its organization row, members or users."""
    a, b = seed.a, seed.b
    invitation = {
        **row_for("invitations", b),
        "email": (await _email_of(runtime, a.user_id)).lower(),
        "role": "viewer",
    }
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(insert(metadata.tables["invitations"]).values(invitation))
    try:
        for org_id in (a.org_id, None):
            async with acting_as(runtime, org_id=org_id, user_id=a.user_id) as conn:
                others = seed.ids("invitations", "B")
                ids = [invitation["id"], *others]
                assert await visible_ids(conn, "invitations", ids) == {invitation["id"]}
                for statement in (
                    "update invitations set role = 'admin' where id = :id",
                    "update invitations set org_id = org_id where id = :id",
                    "delete from invitations where id = :id",
                ):
                    result = await conn.execute(text(statement), {"id": invitation["id"]})
                    assert result.rowcount == 0, statement
                assert await visible_ids(conn, "organizations", [b.org_id]) == set()
                assert await visible_ids(conn, "memberships", seed.ids("memberships", "B")) == set()
                assert await visible_ids(conn, "users", [b.user_id, b.co_member_id]) == set()
        # Someone else (A's co-member) does not see it.
        async with acting_as(runtime, org_id=a.org_id, user_id=a.co_member_id) as conn:
            assert await visible_ids(conn, "invitations", [invitation["id"]]) == set()
        async with runtime.database.system_engine.connect() as conn:
            role = text("select role from invitations where id = :id")
            assert (await conn.execute(role, {"id": invitation["id"]})).scalar_one() == "viewer"
    finally:
        async with runtime.database.system_engine.begin() as conn:
            await conn.execute(
                text("delete from invitations where id = :id"), {"id": invitation["id"]}
            )


# --- the catalog: every table isolated and FORCEd, or declared shared -------------------------


async def _public_tables(runtime: Runtime) -> dict[str, tuple[bool, bool]]:
    """table -> (row security enabled, row security forced), for every table in `public`."""
    query = text(
        "select c.relname, c.relrowsecurity, c.relforcerowsecurity "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and c.relkind in ('r', 'p')"
    )
    async with runtime.database.system_engine.connect() as conn:
        return {
            row.relname: (row.relrowsecurity, row.relforcerowsecurity)
            for row in await conn.execute(query)
        }


async def test_every_public_table_is_isolated_or_declared_shared(runtime: Runtime) -> None:
    tables = await _public_tables(runtime)
    undeclared = set(tables) - set(ISOLATED_TABLES) - set(SHARED_TABLES)
    assert not undeclared, f"tables neither isolated nor declared shared: {undeclared}"


async def test_every_declared_table_exists(runtime: Runtime) -> None:
    tables = await _public_tables(runtime)
    missing = (set(ISOLATED_TABLES) | set(SHARED_TABLES)) - set(tables)
    assert not missing


async def test_every_isolated_table_enables_and_forces_row_level_security(
    runtime: Runtime,
) -> None:
    tables = await _public_tables(runtime)
    not_forced = {t: tables.get(t) for t in ISOLATED_TABLES if tables.get(t) != (True, True)}
    assert not not_forced, f"(enabled, forced) is not (True, True) for: {not_forced}"


async def test_every_isolated_table_has_a_policy(runtime: Runtime) -> None:
    query = text(
        "select tablename, count(*) as policies from pg_policies "
        "where schemaname = 'public' group by tablename"
    )
    async with runtime.database.system_engine.connect() as conn:
        policies = {row.tablename: row.policies for row in await conn.execute(query)}
    without = sorted(t for t in ISOLATED_TABLES if not policies.get(t))
    assert not without, f"isolated tables without any policy: {without}"


# --- the application role ---------------------------------------------------------------------


async def test_app_role_is_not_superuser_and_cannot_bypass_row_level_security(
    runtime: Runtime, settings: Settings
) -> None:
    async with runtime.database.app_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "select current_user as name, rolsuper, rolbypassrls, rolcreaterole, "
                    "rolcreatedb, rolreplication from pg_roles where rolname = current_user"
                )
            )
        ).one()
    assert row.name == settings.database_app_role
    assert not row.rolsuper
    assert not row.rolbypassrls
    assert not row.rolcreaterole
    assert not row.rolcreatedb
    assert not row.rolreplication


async def test_app_role_owns_no_table(runtime: Runtime, settings: Settings) -> None:
    query = text(
        "select c.relname from pg_class c join pg_roles r on r.oid = c.relowner "
        "where r.rolname = :role"
    )
    async with runtime.database.system_engine.connect() as conn:
        owned = list((await conn.execute(query, {"role": settings.database_app_role})).scalars())
    assert owned == []


async def test_app_role_cannot_switch_row_security_off(runtime: Runtime, seed: Seed) -> None:
    async with runtime.database.app_engine.connect() as conn:
        await conn.begin()
        try:
            await conn.execute(text("set local row_security = off"))
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text("select count(*) from workflows"))
        finally:
            await conn.rollback()
    assert_rls_violation(caught.value)


@pytest.mark.parametrize(
    "statement",
    [
        "update audit_logs set details = '{\"rewritten\": true}' where id = any(:ids)",
        "delete from audit_logs where id = any(:ids)",
        "truncate audit_logs",
    ],
    ids=["update", "delete", "truncate"],
)
async def test_app_role_cannot_change_audit_logs_even_of_its_own_organization(
    runtime: Runtime, seed: Seed, statement: str
) -> None:
    own = seed.ids("audit_logs", "A")
    error = await rejected(
        runtime, text(statement), {"ids": own}, org_id=seed.a.org_id, user_id=seed.a.user_id
    )
    assert_permission_denied(error)


@pytest.mark.parametrize(
    "statement",
    [
        "update workflow_versions set definition = '{\"steps\": []}' where id = any(:ids)",
        "update workflow_versions set message = 'rewritten' where id = any(:ids)",
        "delete from workflow_versions where id = any(:ids)",
        "truncate workflow_versions",
    ],
    ids=["update-definition", "update-message", "delete", "truncate"],
)
async def test_app_role_cannot_change_workflow_versions_even_of_its_own_organization(
    runtime: Runtime, seed: Seed, statement: str
) -> None:
    """A version is immutable: history that its own organization could rewrite is no history."""
    own = seed.ids("workflow_versions", "A")
    error = await rejected(
        runtime, text(statement), {"ids": own}, org_id=seed.a.org_id, user_id=seed.a.user_id
    )
    assert_permission_denied(error)


async def test_app_role_may_read_alembic_version(runtime: Runtime) -> None:
    async with runtime.database.app_engine.connect() as conn:
        version = (await conn.execute(text("select version_num from alembic_version"))).scalar()
    assert version == head_revision()


@pytest.mark.parametrize(
    "statement",
    [
        "insert into alembic_version (version_num) values ('hijacked')",
        "update alembic_version set version_num = 'hijacked'",
        "delete from alembic_version",
        "truncate alembic_version",
    ],
    ids=["insert", "update", "delete", "truncate"],
)
async def test_app_role_cannot_write_alembic_version(runtime: Runtime, statement: str) -> None:
    error = await rejected(runtime, text(statement))
    assert_permission_denied(error)
