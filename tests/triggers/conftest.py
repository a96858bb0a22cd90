"""Every test here leaves no schedule behind: the test database is shared by the session, and a
later test's worker processes would fire it (their ticker looks at every organization)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from taskloom.runtime import Runtime
from tests.triggers.schedule_support import delete_all_schedules


@pytest.fixture(autouse=True)
async def _no_schedule_outlives_its_test(runtime: Runtime) -> AsyncIterator[None]:
    yield
    await delete_all_schedules(runtime)
