"""Fixtures of the single sign-on tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from taskloom.runtime import Runtime
from tests.sso.required_support import SsoSeed


@pytest.fixture
async def sso(runtime: Runtime) -> AsyncIterator[SsoSeed]:
    """Providers, mappings and SSO sessions seeded in the database, removed afterwards."""
    seed = SsoSeed(runtime)
    yield seed
    await seed.cleanup()
