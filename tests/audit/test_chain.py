"""The audit trail is a hash chain per organization (plus one instance-wide chain for events that
belong to no organization). Appending keeps it linear even under concurrency, and any change made
behind the application's back (by the privileged owner, since the application role may not update
or delete audit rows) is reported by `verify_chain` at the exact row where the chain breaks.

Each test uses organizations of its own, created through the system engine."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from taskloom.audit.actions import AuditAction
from taskloom.audit.models import AuditLog
from taskloom.audit.service import (
    GENESIS_HASH,
    AuditContext,
    ChainVerification,
    _row_hash,
    content_digest,
    record,
    verify_chain,
)
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.runtime import Runtime


@dataclass(frozen=True)
class Org:
    id: uuid.UUID
    owner_id: uuid.UUID


@dataclass(frozen=True)
class Link:
    """What a chain row looks like from the outside."""

    id: uuid.UUID
    seq: int
    prev_hash: str
    hash: str


NewOrg = Callable[[], Awaitable[Org]]


@pytest.fixture
async def new_org(runtime: Runtime) -> AsyncIterator[NewOrg]:
    """Creates organizations (each with an owner) through the system engine; removes them after
    the test, their audit rows with them."""
    created: list[Org] = []

    async def create() -> Org:
        org = Org(id=uuid.uuid4(), owner_id=uuid.uuid4())
        tag = secrets.token_hex(6)
        async with runtime.database.system_engine.begin() as conn:
            await conn.execute(
                text("insert into organizations (id, name, slug) values (:id, 'Chain', :slug)"),
                {"id": org.id, "slug": f"chain-{tag}"},
            )
            await conn.execute(
                text(
                    "insert into users (id, email, display_name) "
                    "values (:id, :email, 'Chain owner')"
                ),
                {"id": org.owner_id, "email": f"chain-{tag}@example.test"},
            )
            await conn.execute(
                text(
                    "insert into memberships (id, org_id, user_id, role) "
                    "values (:id, :org, :user, 'owner')"
                ),
                {"id": uuid.uuid4(), "org": org.id, "user": org.owner_id},
            )
        created.append(org)
        return org

    yield create

    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("delete from organizations where id = any(:ids)"), {"ids": [o.id for o in created]}
        )
        await conn.execute(
            text("delete from users where id = any(:ids)"), {"ids": [o.owner_id for o in created]}
        )


@pytest.fixture
async def org(new_org: NewOrg) -> Org:
    return await new_org()


def context_of(org: Org) -> AuditContext:
    return AuditContext(
        actor_user_id=org.owner_id,
        ip="203.0.113.9",
        user_agent="chain-test/1.0",
        request_id=f"req-{secrets.token_hex(4)}",
    )


async def append(runtime: Runtime, org: Org, *, details: dict[str, Any] | None = None) -> Link:
    """One event in its own tenant transaction of the application role."""
    async with tenant_transaction(runtime.database, org_id=org.id, user_id=org.owner_id) as session:
        row = await record(
            session=session,
            context=context_of(org),
            action=AuditAction.ORG_UPDATE,
            org_id=org.id,
            resource_type="organization",
            resource_id=org.id,
            details=details if details is not None else {"n": secrets.randbelow(1000)},
        )
        return Link(row.id, row.seq, row.prev_hash, row.hash)


async def append_many(runtime: Runtime, org: Org, count: int) -> list[Link]:
    return [await append(runtime, org) for _ in range(count)]


async def verify(runtime: Runtime, org: Org) -> ChainVerification:
    """Verification as the application role, acting in the organization."""
    async with tenant_transaction(runtime.database, org_id=org.id, user_id=org.owner_id) as session:
        return await verify_chain(session=session, org_id=org.id)


async def verify_as_system(runtime: Runtime, org_id: uuid.UUID | None) -> ChainVerification:
    async with system_transaction(runtime.database) as session:
        return await verify_chain(session=session, org_id=org_id)


async def chain_of(runtime: Runtime, org_id: uuid.UUID) -> list[Link]:
    """The stored chain, read through the privileged engine, in seq order."""
    async with system_transaction(runtime.database) as session:
        rows = await session.execute(
            select(AuditLog.id, AuditLog.seq, AuditLog.prev_hash, AuditLog.hash)
            .where(AuditLog.org_id == org_id)
            .order_by(AuditLog.seq)
        )
        return [Link(*row) for row in rows]


async def tamper(runtime: Runtime, statement: str, **params: Any) -> None:
    """A change made behind the application's back, by the privileged owner connection."""
    async with runtime.database.system_engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        assert result.rowcount == 1


def assert_linked(chain: list[Link]) -> None:
    """seq runs 1..n and every row points at the hash of the row before it."""
    assert [link.seq for link in chain] == list(range(1, len(chain) + 1))
    assert [link.prev_hash for link in chain] == [GENESIS_HASH] + [link.hash for link in chain[:-1]]


# --- a healthy chain ---------------------------------------------------------------------------


async def test_a_series_of_events_forms_a_chain_that_verifies(runtime: Runtime, org: Org) -> None:
    await append_many(runtime, org, 7)

    assert await verify(runtime, org) == ChainVerification(ok=True, rows_checked=7)
    assert await verify_as_system(runtime, org.id) == ChainVerification(ok=True, rows_checked=7)


async def test_events_of_one_transaction_are_chained_in_order(runtime: Runtime, org: Org) -> None:
    async with tenant_transaction(runtime.database, org_id=org.id, user_id=org.owner_id) as session:
        for n in range(4):
            await record(
                session=session,
                context=context_of(org),
                action=AuditAction.MEMBER_INVITE,
                org_id=org.id,
                details={"n": n},
            )

    assert_linked(await chain_of(runtime, org.id))
    assert await verify(runtime, org) == ChainVerification(ok=True, rows_checked=4)


async def test_sequence_numbers_run_from_one_without_gaps(runtime: Runtime, org: Org) -> None:
    appended = await append_many(runtime, org, 5)

    assert [link.seq for link in appended] == [1, 2, 3, 4, 5]
    stored = await chain_of(runtime, org.id)
    assert stored == appended
    assert_linked(stored)


async def test_an_empty_chain_verifies(runtime: Runtime, org: Org) -> None:
    assert await verify(runtime, org) == ChainVerification(ok=True, rows_checked=0)


async def test_two_organizations_have_independent_chains(runtime: Runtime, new_org: NewOrg) -> None:
    first, second = await new_org(), await new_org()
    for _ in range(3):
        await append(runtime, first)
        await append(runtime, second)
    await append(runtime, first)

    first_chain, second_chain = (
        await chain_of(runtime, first.id),
        await chain_of(runtime, second.id),
    )
    assert len(first_chain) == 4
    assert len(second_chain) == 3
    assert_linked(first_chain)
    assert_linked(second_chain)
    assert await verify(runtime, first) == ChainVerification(ok=True, rows_checked=4)
    assert await verify(runtime, second) == ChainVerification(ok=True, rows_checked=3)


@pytest.mark.parametrize(
    "details",
    [
        {"nested": {"list": [1, 2.5, None, True, "x"]}, "unicode": "Zoë \u2028 ✓"},
        {"cost_usd": 0.1 + 0.2, "tiny": 1e-7, "huge_int": 2**70},
        {"large_float": 1e20},
    ],
    ids=["nested-and-unicode", "ordinary-numbers", "large-float"],
)
async def test_an_untouched_row_verifies_whatever_json_details_it_carries(
    runtime: Runtime, org: Org, details: dict[str, Any]
) -> None:
    """The hash must cover what the database stores, not a Python value that PostgreSQL's jsonb
    normalizes differently (1e20 is stored as 100000000000000000000 and read back as an int)."""
    await append(runtime, org, details=details)

    assert await verify(runtime, org) == ChainVerification(ok=True, rows_checked=1)


# --- the instance chain ------------------------------------------------------------------------


async def test_the_instance_chain_verifies(runtime: Runtime) -> None:
    """Events of no organization, written through the system engine. The chain is shared with
    the rest of the test session, so only this test's rows are checked for their numbering."""
    appended: list[AuditLog] = []
    for _ in range(3):
        async with system_transaction(runtime.database) as session:
            appended.append(
                await record(
                    session=session,
                    context=AuditContext(ip="198.51.100.23", user_agent="chain-test/1.0"),
                    action=AuditAction.AUTH_LOGIN_FAILED,
                    org_id=None,
                    resource_type="user",
                    success=False,
                    details={"reason": "invalid_credentials"},
                )
            )

    assert [row.seq for row in appended] == [appended[0].seq + i for i in range(3)]
    assert [row.prev_hash for row in appended[1:]] == [row.hash for row in appended[:-1]]
    verification = await verify_as_system(runtime, None)
    assert verification.ok, verification
    assert verification.rows_checked >= 3
    assert verification.rows_checked == appended[-1].seq


async def test_app_role_cannot_append_to_the_instance_chain(runtime: Runtime, org: Org) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(
            runtime.database, org_id=org.id, user_id=org.owner_id
        ) as session:
            await record(
                session=session,
                context=context_of(org),
                action=AuditAction.AUTH_LOGIN_FAILED,
                org_id=None,
            )
    assert getattr(caught.value.orig, "sqlstate", None) == "42501"


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_appends_to_one_organization_never_fork_the_chain(
    runtime: Runtime, org: Org
) -> None:
    appended = await asyncio.gather(*(append(runtime, org) for _ in range(20)))

    assert sorted(link.seq for link in appended) == list(range(1, 21))
    chain = await chain_of(runtime, org.id)
    assert len({link.prev_hash for link in chain}) == 20  # no two rows claim the same parent
    assert_linked(chain)
    assert await verify(runtime, org) == ChainVerification(ok=True, rows_checked=20)


# --- tampering -----------------------------------------------------------------------------------


async def test_modified_details_are_reported_at_that_row(runtime: Runtime, org: Org) -> None:
    chain = await append_many(runtime, org, 5)
    await tamper(
        runtime,
        "update audit_logs set details = '{\"n\": -1}'::jsonb where id = :id",
        id=chain[2].id,
    )

    for verification in (await verify(runtime, org), await verify_as_system(runtime, org.id)):
        assert not verification.ok
        assert verification.rows_checked == 2
        assert verification.first_broken_id == chain[2].id
        assert verification.first_broken_seq == 3
        assert verification.reason
        assert "modified" in verification.reason


async def test_a_rewritten_row_with_a_recomputed_hash_is_reported_at_the_next_row(
    runtime: Runtime, org: Org
) -> None:
    """Someone who knows the hashing rule rewrites a row and its hash: the next row's link
    (its prev_hash) no longer matches."""
    chain = await append_many(runtime, org, 4)
    async with system_transaction(runtime.database) as session:
        row = await session.get_one(AuditLog, chain[1].id)
        row.details = {"n": -1}
        row.content_digest = content_digest(row, row.content_salt or "")
        row.hash = _row_hash(row)

    verification = await verify_as_system(runtime, org.id)
    assert not verification.ok
    assert verification.first_broken_id == chain[2].id
    assert verification.first_broken_seq == 3
    assert verification.reason
    assert "prev_hash" in verification.reason


async def test_a_deleted_middle_row_is_reported_as_a_gap_at_the_next_row(
    runtime: Runtime, org: Org
) -> None:
    chain = await append_many(runtime, org, 5)
    await tamper(runtime, "delete from audit_logs where id = :id", id=chain[2].id)

    verification = await verify(runtime, org)
    assert not verification.ok
    assert verification.rows_checked == 2
    assert verification.first_broken_id == chain[3].id
    assert verification.first_broken_seq == 4
    assert verification.reason
    assert "sequence gap" in verification.reason


async def test_a_deleted_newest_row_is_reported(runtime: Runtime, org: Org) -> None:
    """The service promises that deleting *any* row breaks verification."""
    chain = await append_many(runtime, org, 3)
    await tamper(runtime, "delete from audit_logs where id = :id", id=chain[-1].id)

    verification = await verify(runtime, org)
    assert not verification.ok, verification


async def test_a_changed_prev_hash_is_reported_at_that_row(runtime: Runtime, org: Org) -> None:
    chain = await append_many(runtime, org, 5)
    await tamper(
        runtime,
        "update audit_logs set prev_hash = :forged where id = :id",
        forged="f" * 64,
        id=chain[2].id,
    )

    verification = await verify(runtime, org)
    assert not verification.ok
    assert verification.rows_checked == 2
    assert verification.first_broken_id == chain[2].id
    assert verification.first_broken_seq == 3
    assert verification.reason
    assert "prev_hash" in verification.reason


async def test_a_removed_salt_without_an_erasure_is_reported(runtime: Runtime, org: Org) -> None:
    """Only an erasure may drop a row's salt (and it records when); dropping it to hide an
    edit is caught."""
    chain = await append_many(runtime, org, 3)
    await tamper(
        runtime,
        "update audit_logs set content_salt = null, details = '{}'::jsonb where id = :id",
        id=chain[1].id,
    )
    verification = await verify_as_system(runtime, org.id)
    assert not verification.ok
    assert verification.first_broken_seq == 2
    assert verification.reason
    assert "without a recorded erasure" in verification.reason
