"""Input PostgreSQL cannot store is a clear 422 on every route, never a 500; unexpected errors
keep their request id."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import register


@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    [
        ("POST", "/api/orgs", '{"name": "a\\u0000b"}', "body.name"),
        ("POST", "/auth/login", '{"email": "x\\u0000@example.com", "password": "p"}', "body.email"),
        ("POST", "/api/workflows", '{"name": "w", "description": "\\ud800"}', "body.description"),
        (
            "POST",
            "/api/workflows",
            '{"name": "w", "definition": {"steps": [{"id": "s", '
            '"type": "transform", "args": {"k\\u0000": 1}}]}}',
            "body.definition.steps.0.args",
        ),
    ],
)
async def test_nul_characters_and_lone_surrogates_are_refused_with_their_location(
    client: httpx.AsyncClient, method: str, path: str, body: str, where: str
) -> None:
    owner = await register(client, label="guard")
    response = await client.request(
        method,
        path,
        content=body.encode(),
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_characters"
    assert error["message"].startswith(where)
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_numbers_json_cannot_store_are_refused(
    client: httpx.AsyncClient, number: str
) -> None:
    owner = await register(client, label="guard")
    created = await client.post(
        "/api/workflows",
        json={
            "name": "w",
            "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
        },
        headers=owner.headers,
    )
    response = await client.post(
        f"/api/workflows/{created.json()['id']}/execute",
        content=f'{{"input": {{"a": {number}}}}}'.encode(),
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_number"


async def test_query_strings_and_forms_are_checked_too(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="guard")
    listed = await client.get("/api/audit-logs?resource_type=%00", headers=owner.headers)
    assert listed.status_code == 422
    assert listed.json()["error"]["message"].startswith("query.resource_type")
    form = await client.post(
        "/ui/login",
        content=b"email=a%00b%40example.com&password=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 422


async def test_points_in_time_outside_the_storable_range_are_a_422(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="guard")
    for path in (
        "/api/audit-logs?from=9999-12-31T23:59:59-14:00",
        "/api/executions?until=0001-01-01T00:00:00%2B14:00",
    ):
        response = await client.get(path, headers=owner.headers)
        assert response.status_code == 422, (path, response.text)
        assert "outside the years 1 to 9999" in response.text


async def test_error_answers_are_documented_on_every_operation(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            documented = set(operation["responses"])
            assert {"401", "403", "404", "422"} <= documented, (method, path)
    schema = spec["components"]["schemas"]["ErrorResponse"]
    assert schema["required"] == ["error"]


async def test_a_database_without_free_connections_answers_503_not_500(
    pg_server_url: str, redis_url: str
) -> None:
    """Real exhaustion: the application role may open no connection, and its open ones end."""
    import asyncpg

    from taskloom.app import create_app
    from taskloom.runtime import open_runtime
    from tests.conftest import fresh_deployment

    async with fresh_deployment(pg_server_url, redis_url, label="full") as settings:
        runtime = await open_runtime(settings)
        app = create_app(runtime=runtime)
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
                    owner = await register(api, label="full")
                    admin = await asyncpg.connect(settings.database_url)
                    role = settings.database_app_role
                    await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
                    await admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
                        role,
                    )
                    response = await api.get("/api/workflows", headers=owner.headers)
                    await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
                    await admin.close()
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "unavailable"
                    assert response.headers["retry-after"] == "5"
                    recovered = await api.get("/api/workflows", headers=owner.headers)
                    assert recovered.status_code == 200  # and it recovers by itself
        finally:
            await runtime.close()


@pytest.mark.parametrize(
    ("body", "where", "code"),
    [
        ('{"name": "a\\u0000b"}', "body.name", "invalid_characters"),
        ('{"name": "w", "description": NaN}', "body", "invalid_number"),
    ],
)
async def test_a_json_body_without_content_type_is_checked_too(
    client: httpx.AsyncClient, body: str, where: str, code: str
) -> None:
    owner = await register(client, label="guard")
    response = await client.post("/api/workflows", content=body.encode(), headers=owner.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"].startswith(where)
