"""Every error is JSON `{"error": {"code", "message", "request_id"}}` with the right 4xx."""

from __future__ import annotations

import httpx

from tests.factories import register


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/login", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    _assert_error(response, 400, "malformed_json")


async def test_unknown_fields_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/login", json={"email": "a@example.test", "password": "x", "is_admin": True}
    )
    error = _assert_error(response, 422, "validation_failed")
    assert "is_admin" in str(error["message"])


async def test_bad_uuid_in_path_is_422(client: httpx.AsyncClient) -> None:
    account = await register(client, label="baduuid")
    response = await client.delete("/api/members/not-a-uuid", headers=account.headers)
    error = _assert_error(response, 422, "validation_failed")
    assert "user_id" in str(error["message"])


async def test_oversized_bodies_are_413_with_or_without_content_length(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"email": "' + b"a" * 2_000_000 + b'"}'
    declared = await client.post(
        "/auth/login", content=big, headers={"content-type": "application/json"}
    )
    _assert_error(declared, 413, "payload_too_large")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"a" * 65_536

    streamed = await client.post(
        "/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_error(streamed, 413, "payload_too_large")


async def test_unknown_routes_and_methods_are_json(client: httpx.AsyncClient) -> None:
    _assert_error(await client.get("/no/such/route"), 404, "not_found")
    _assert_error(await client.put("/health/live"), 405, "method_not_allowed")


async def test_request_id_is_honoured_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/health/live", headers={"X-Request-ID": "req-12345678"})
    assert mine.headers["x-request-id"] == "req-12345678"
    hostile = await client.get("/health/live", headers={"X-Request-ID": "bad id\twith junk"})
    assert hostile.headers["x-request-id"] != "bad id\twith junk"
    assert len(hostile.headers["x-request-id"]) == 32
    error = await client.get("/auth/me", headers={"X-Request-ID": "trace-abcdef01"})
    assert error.json()["error"]["request_id"] == "trace-abcdef01"


async def test_health_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
