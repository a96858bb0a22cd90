"""Where a person could be left behind: every column of every table (text, JSON, UUID, inet;
binary too, with the export archives unzipped) and every Redis key of the deployment with its
value. Each scan returns one line per hit, so an assertion failure says where."""

from __future__ import annotations

import io
import zipfile

from sqlalchemy import text

from taskloom.redis import create_redis
from taskloom.runtime import Runtime


async def scan_columns(runtime: Runtime, needles: list[str]) -> list[str]:
    """Every text, JSON, UUID and inet column of every table that contains one of the needles."""
    hits = []
    async with runtime.database.system_engine.connect() as conn:
        columns = await conn.execute(
            text(
                "select table_name, column_name from information_schema.columns "
                "where table_schema = 'public' and data_type in "
                "('text', 'character varying', 'json', 'jsonb', 'inet', 'uuid')"
            )
        )
        for table, column in columns.all():
            for needle in needles:
                found = await conn.execute(
                    text(f'select count(*) from "{table}" where "{column}"::text ilike :n'),
                    {"n": f"%{needle}%"},
                )
                if found.scalar_one():
                    hits.append(f"{table}.{column} contains {needle!r}")
    return hits


def _found(data: bytes, needles: list[str]) -> list[str]:
    lowered = data.lower()
    return [needle for needle in needles if needle.lower().encode() in lowered]


async def scan_binary(runtime: Runtime, needles: list[str]) -> list[str]:
    """Every bytea column as stored, and the queued-export archives unzipped (their chunks, in
    order, make one ZIP whose deflated members a byte scan would never match)."""
    hits = []
    async with runtime.database.system_engine.connect() as conn:
        columns = await conn.execute(
            text(
                "select table_name, column_name from information_schema.columns "
                "where table_schema = 'public' and data_type = 'bytea'"
            )
        )
        for table, column in columns.all():
            values = await conn.execute(
                text(f'select "{column}" from "{table}" where "{column}" is not null')
            )
            for value in values.scalars():
                hits += [f"{table}.{column} contains {n!r}" for n in _found(bytes(value), needles)]
        archives = await conn.execute(
            text(
                "select request_id, string_agg(data, ''::bytea order by seq) "
                "from gdpr_export_files group by request_id"
            )
        )
        for request_id, data in archives.all():
            with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
                for name in archive.namelist():
                    hits += [
                        f"gdpr_export_files of {request_id}: {name} contains {n!r}"
                        for n in _found(archive.read(name), needles)
                    ]
    return hits


async def scan_redis(runtime: Runtime, needles: list[str]) -> list[str]:
    """Every key under the deployment's prefix (BullMQ's included) whose name or value (any
    type: string, hash, list, set, sorted set, stream) contains one of the needles."""
    redis = create_redis(runtime.settings, purpose="test-trace-scan", decode_responses=False)
    hits = []
    try:
        async for key in redis.scan_iter(match=runtime.keys.match(), count=1000):
            kind = (await redis.type(key)).decode()
            values: list[bytes] = []
            if kind == "string":
                values = [await redis.get(key) or b""]
            elif kind == "hash":
                fields = await redis.hgetall(key)
                values = [*fields.keys(), *fields.values()]
            elif kind == "list":
                values = await redis.lrange(key, 0, -1)
            elif kind == "set":
                values = list(await redis.smembers(key))
            elif kind == "zset":
                values = await redis.zrange(key, 0, -1)
            elif kind == "stream":
                for _, entry in await redis.xrange(key):
                    values += [*entry.keys(), *entry.values()]
            for needle in _found(b"\n".join([key, *values]), needles):
                hits.append(f"redis {key.decode()} ({kind}) contains {needle!r}")
    finally:
        await redis.aclose()
    return hits
