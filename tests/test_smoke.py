import httpx

from tests.factories import register


async def test_register_then_me(client: httpx.AsyncClient) -> None:
    account = await register(client, label="smoke")
    response = await client.get("/auth/me", headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["email"] == account.email
    assert body["role"] == "owner"
