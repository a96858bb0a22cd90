"""Pytest fixtures for the fake AI APIs: one fresh server per test, stopped after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake
