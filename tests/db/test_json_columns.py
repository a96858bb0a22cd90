"""JSON columns read back exactly as `json.loads` would give them (db/engine.json_value decodes
with msgspec and leaves to `json` the numbers a double cannot hold): integers of any size stay
exact integers (jsonb writes large numbers out as digits), a float beyond a double's range is
inf as before."""

from __future__ import annotations

import json
import math
import uuid

from sqlalchemy import text

from taskloom.db.engine import json_value
from taskloom.db.tenancy import system_transaction, tenant_reads
from taskloom.runtime import Runtime

CASES = [
    '{"a": 1.5, "b": [1, 2, {"c": null}], "d": "\\u00e9t\\u00e9", "e": true}',
    "123456789012345678901234567890",
    "-0.0",
    "0.1",
    "1e400",
    '"\\ud83d\\ude00 and \\"quotes\\""',
    "[]",
]


def test_json_value_is_json_loads() -> None:
    for case in CASES:
        ours, reference = json_value(case), json.loads(case)
        assert ours == reference
        assert type(ours) is type(reference)
    assert json_value("1e400") == math.inf
    assert json_value("123456789012345678901234567890") == 123456789012345678901234567890


async def test_jsonb_read_through_the_pool_keeps_big_numbers(runtime: Runtime) -> None:
    """Through the engine's connections, ORM or the asyncpg connection itself."""
    async with system_transaction(runtime.database) as db:
        rows = (
            await db.execute(
                text(
                    "select '123456789012345678901234567890'::jsonb as big, '1e400'::jsonb as huge,"
                    " '{\"x\": [0.1, 2]}'::jsonb as nested"
                )
            )
        ).one()
    assert rows.big == 123456789012345678901234567890
    assert isinstance(rows.big, int)
    assert rows.huge == 10**400  # jsonb writes it out as digits: an exact integer again
    assert rows.nested == {"x": [0.1, 2]}
    async with tenant_reads(runtime.database, org_id=uuid.uuid4(), user_id=None) as reads:
        value = await reads.fetchval("select '[123456789012345678901234567890, 1.5e400]'::jsonb")
    assert value == [123456789012345678901234567890, 15 * 10**399]
