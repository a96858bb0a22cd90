"""Fixtures of the database tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from taskloom.config import Settings


@pytest.fixture
async def empty_database(settings: Settings, pg_server_url: str) -> AsyncIterator[Settings]:
    """Settings for an empty, unmigrated database (and an application role) of this test only;
    both are dropped afterwards."""
    suffix = secrets.token_hex(4)
    database, role = f"taskloom_empty_{suffix}", f"taskloom_app_empty_{suffix}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = make_url(pg_server_url).set(database=database)
        yield settings.model_copy(
            update={
                "database_url": url.render_as_string(hide_password=False),
                "database_app_role": role,
                "database_app_url": None,
            }
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
