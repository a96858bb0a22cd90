"""The host restriction of a step that reads secrets holds for every request through the
process's outbound transports, pooled or not, httpx or httpx2 (the AI and MCP SDKs' client), and
for every redirect hop: a request to another host is refused before it reaches any server."""

from __future__ import annotations

import uuid

import httpx
import httpx2
import pytest

from taskloom.config import Settings
from taskloom.executions.steps.base import StepContext
from taskloom.executions.steps.http import HttpArgs, HttpStep
from taskloom.net import SecretHostNotAllowed, restricted_to
from taskloom.outbound_pool import OutboundPool, PoolKey
from tests.secrets.conftest import EchoServer


def _context() -> StepContext:
    settings = Settings(_env_file=None, taskloom_env="test", outbound_allowed_hosts="127.0.0.1")  # type: ignore[call-arg]
    return StepContext(
        settings=settings,
        org_id=uuid.uuid4(),
        execution_id=uuid.uuid4(),
        step_id="send",
        attempt=1,
    )


async def test_a_redirect_to_a_host_the_secret_does_not_allow_is_refused_at_that_hop(
    echo_server: EchoServer,
) -> None:
    elsewhere = echo_server.url("/landed").replace("127.0.0.1", "localhost")
    args = HttpArgs.model_validate({"url": echo_server.url(f"/redirect?to={elsewhere}")})
    with (
        restricted_to(["127.0.0.1"], ["TOKEN"]) as restriction,
        pytest.raises(SecretHostNotAllowed),
    ):
        await HttpStep().run(args, _context())
    assert restriction.refused is not None
    assert restriction.refused.host == "localhost"
    assert len(echo_server.requests_to("/redirect")) == 1  # the allowed host was asked
    assert echo_server.requests_to("/landed") == []
    # Without the restriction, the same step follows the redirect.
    answer = await HttpStep().run(args, _context())
    assert answer["status"] == 200
    assert len(echo_server.requests_to("/landed")) == 1


@pytest.mark.parametrize("flavor", ["httpx", "httpx2"])
@pytest.mark.parametrize("pooled", [True, False])
async def test_every_outbound_transport_refuses_a_host_outside_the_restriction(
    echo_server: EchoServer, flavor: str, pooled: bool
) -> None:
    pool = OutboundPool(max_clients=8 if pooled else 0)
    key = PoolKey(
        org="org", kind="tool", owner="c", fingerprint="", flavor=flavor, policy="127.0.0.1"
    )  # type: ignore[arg-type]
    library = httpx2 if flavor == "httpx2" else httpx
    target = echo_server.url(f"/transport-{flavor}-{pooled}").replace("127.0.0.1", "localhost")
    try:
        async with (
            pool.transport(key) as transport,
            library.AsyncClient(transport=transport) as client,
        ):
            with (
                restricted_to(["api.example.com"], ["A", "B"]),
                pytest.raises(SecretHostNotAllowed, match=r"secrets \(A, B\)"),
            ):
                await client.get(target)
            assert echo_server.requests_to(f"/transport-{flavor}-{pooled}") == []
            assert (await client.get(target)).status_code == 200  # unrestricted: sent
    finally:
        await pool.aclose()
    assert len(echo_server.requests_to(f"/transport-{flavor}-{pooled}")) == 1
