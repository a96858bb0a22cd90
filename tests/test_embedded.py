"""The embedded default starts a real PostgreSQL and a real Redis under DATA_DIR, keeps their
data across a stop and a restart, and leaves no server process behind."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import psutil
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskloom.config import Settings
from taskloom.db.urls import async_url
from taskloom.embedded import embedded, start_embedded

SERVER_NAMES = {"postgres", "redis-server"}


def _embedded_settings(data_dir: Path) -> Settings:
    # Explicit None beats DATABASE_URL / REDIS_URL in the environment; ignore any .env file.
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
    )


def _is_live(proc: psutil.Process) -> bool:
    try:
        # An exited server stays a zombie until PID 1 reaps it; it is not running any more.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_processes(*markers: str) -> list[psutil.Process]:
    """Live postgres / redis-server processes whose command line mentions a marker, with their
    children (the postgres workers' titles do not mention the data directory)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            mentioned = any(marker in cmdline for marker in markers)
            if proc.info["name"] in SERVER_NAMES and mentioned and _is_live(proc):
                found.append(proc)
                found.extend(proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def test_embedded_servers_persist_data_and_stop_cleanly(tmp_path: Path) -> None:
    settings = _embedded_settings(tmp_path / "data")

    services = start_embedded(settings)
    try:
        database_url = services.settings.database_url
        redis_url = services.settings.redis_url
        assert database_url is not None
        assert redis_url is not None
        assert database_url.startswith("postgresql://postgres@/taskloom?host=/")
        assert redis_url.startswith("unix:///")
        assert services.settings.data_dir == settings.data_dir  # nothing else changed

        engine = create_async_engine(async_url(database_url))
        try:
            async with engine.begin() as conn:
                assert (await conn.execute(text("select current_database()"))).scalar() == (
                    "taskloom"
                )
                await conn.execute(text("create table notes (body text not null)"))
                await conn.execute(text("insert into notes values ('kept')"))
        finally:
            await engine.dispose()

        # This test checks the raw server, so it builds its own client; product code gets
        # clients only from taskloom.redis.create_redis.
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await redis.config_get("appendonly") == {"appendonly": "yes"}
            await redis.set("embedded-test:key", "kept")
        finally:
            await redis.aclose()

        # redis-server's title names its socket, which is under tmp_path unless that is too long.
        markers = (str(tmp_path), urlsplit(redis_url).path)
        processes = _server_processes(*markers)
        names = {proc.name() for proc in processes}
        assert names == SERVER_NAMES, names
    finally:
        services.stop()
    services.stop()  # idempotent

    assert not [proc for proc in processes if _is_live(proc)]
    assert _server_processes(*markers) == []
    assert (tmp_path / "data" / "redis" / "appendonly.aof").read_bytes().count(b"kept") == 1

    # The second start in the same directory reuses the data of the first.
    with embedded(settings) as again:
        assert again.settings.database_url is not None
        assert again.settings.redis_url is not None
        engine = create_async_engine(async_url(again.settings.database_url))
        try:
            async with engine.connect() as conn:
                bodies = (await conn.execute(text("select body from notes"))).scalars().all()
        finally:
            await engine.dispose()
        assert bodies == ["kept"]

        redis = Redis.from_url(again.settings.redis_url, decode_responses=True)  # see above
        try:
            assert await redis.get("embedded-test:key") == "kept"
        finally:
            await redis.aclose()
        markers = (str(tmp_path), urlsplit(again.settings.redis_url).path)
        assert {proc.name() for proc in _server_processes(*markers)} == SERVER_NAMES

    assert _server_processes(*markers) == []


def test_nothing_is_started_when_both_urls_are_given(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url="postgresql://postgres@db.invalid/taskloom",
        redis_url="redis://redis.invalid:6379/0",
    )
    with embedded(settings) as services:
        assert services.settings == settings
        assert not services.running
    assert not (tmp_path / "data").exists()
