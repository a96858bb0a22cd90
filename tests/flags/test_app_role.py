"""Defence in depth: the application role reads global flags but can never write them, whatever
a route does; only the privileged role (after the service checked for a superuser) can."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert, text

from taskloom.db.migrate import _grants
from taskloom.db.rls import AppAccess, shared_tables, tables_with_access
from taskloom.flags.models import FeatureFlag
from taskloom.models import metadata
from taskloom.runtime import Runtime
from tests.db.test_tenant_isolation import acting_as, assert_permission_denied, rejected


@pytest.fixture
async def flag_id(runtime: Runtime) -> AsyncIterator[uuid.UUID]:
    new_id = uuid.uuid4()
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            insert(FeatureFlag).values(id=new_id, key=f"role.{secrets.token_hex(5)}")
        )
    yield new_id
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(text("delete from feature_flags where id = :f"), {"f": new_id})


@pytest.mark.parametrize(
    "statement",
    [
        "insert into feature_flags (id, key, default_enabled) "
        "values (gen_random_uuid(), 'sneaky', true)",
        "update feature_flags set default_enabled = true where id = :f",
        "delete from feature_flags where id = :f",
        "truncate feature_flags cascade",
    ],
    ids=["insert", "update", "delete", "truncate"],
)
async def test_the_application_role_cannot_write_feature_flags(
    runtime: Runtime, flag_id: uuid.UUID, statement: str
) -> None:
    params = {"f": flag_id} if ":f" in statement else {}
    error = await rejected(runtime, text(statement), params)
    assert_permission_denied(error)


async def test_the_application_role_cannot_write_feature_flags_through_the_orm(
    runtime: Runtime,
) -> None:
    statement = insert(FeatureFlag).values(id=uuid.uuid4(), key=f"orm.{secrets.token_hex(4)}")
    assert_permission_denied(await rejected(runtime, statement))


async def test_the_application_role_reads_feature_flags_without_a_tenant(
    runtime: Runtime, flag_id: uuid.UUID
) -> None:
    async with acting_as(runtime, org_id=None, user_id=None) as conn:
        found = await conn.execute(
            text("select id from feature_flags where id = :f"), {"f": flag_id}
        )
        assert found.scalar_one() == flag_id


def test_feature_flags_are_declared_shared_and_read_only() -> None:
    assert "feature_flags" in shared_tables(metadata)
    assert "feature_flags" in tables_with_access(metadata, AppAccess.READ_ONLY)
    grants = _grants(role="app", database="db")
    revoke = 'REVOKE INSERT, UPDATE, DELETE ON "feature_flags" FROM "app"'
    # The revoke must come after the blanket grant, or the grant would give writes back.
    blanket = next(i for i, s in enumerate(grants) if s.startswith("GRANT SELECT, INSERT"))
    assert grants.index(revoke) > blanket
