"""Fixtures starting a fresh fake API per test. Import them where they are needed, e.g.
`from tests.fakes.fixtures import fake_github` in a conftest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.tool_apis import FakeGitHub, FakeLinear, FakeNotion


@pytest.fixture
def fake_notion() -> Iterator[FakeNotion]:
    with FakeNotion() as fake:
        yield fake


@pytest.fixture
def fake_linear() -> Iterator[FakeLinear]:
    with FakeLinear() as fake:
        yield fake


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake
