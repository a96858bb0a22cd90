"""Access tokens, refresh-token rotation and sign-out, against the real database and Redis."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
import jwt
from argon2 import PasswordHasher

from taskloom.app import create_app
from taskloom.auth.passwords import Passwords
from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, login, register


async def test_register_login_me_and_refresh_rotation(client: httpx.AsyncClient) -> None:
    account = await register(client, label="rotation")
    signed_in = await login(client, account.email)
    me = await client.get("/auth/me", headers=signed_in.headers)
    assert me.status_code == 200
    assert me.json()["user"]["id"] == str(account.user_id)
    assert me.json()["role"] == "owner"
    assert me.json()["auth"] == "session"

    first = await client.post("/auth/refresh", json={"refresh_token": signed_in.refresh_token})
    assert first.status_code == 200, first.text
    rotated = first.json()
    assert rotated["refresh_token"] != signed_in.refresh_token
    new_me = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    assert new_me.status_code == 200
    second = await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert second.status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client, label="reuse")
    rotated = (
        await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    ).json()

    replay = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "refresh_token_reused"

    # The family is gone: the newest refresh token and its access token stop working too.
    after = await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert after.status_code == 401
    assert after.json()["error"]["code"] == "session_revoked"
    me = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    assert me.status_code == 401


async def test_refresh_token_is_not_accepted_as_an_access_token(client: httpx.AsyncClient) -> None:
    account = await register(client, label="typ")
    response = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {account.refresh_token}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


async def test_a_jwt_with_another_typ_is_refused_even_when_signed_correctly(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register(client, label="typ2")
    claims = jwt.decode(
        account.access_token,
        settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
        issuer=settings.jwt_issuer,
    )
    claims["typ"] = "refresh"
    forged = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    response = await client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_tampered_expired_and_alg_none_tokens_are_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await register(client, label="tamper")
    header, payload, signature = account.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    claims_other_user = {**claims, "sub": str(uuid.uuid4())}
    tampered = f"{header}.{_b64(claims_other_user)}.{signature}"
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    expired = jwt.encode(
        {
            **claims,
            "iat": datetime.now(UTC) - timedelta(hours=2),
            "exp": datetime.now(UTC) - timedelta(hours=1),
        },
        settings.jwt_secret.get_secret_value(),
        algorithm="HS256",
    )
    wrong_key = jwt.encode(claims, "another-secret-that-is-long-enough-123456", algorithm="HS256")

    for token, code in [
        (tampered, "invalid_token"),
        (alg_none, "invalid_token"),
        (expired, "token_expired"),
        (wrong_key, "invalid_token"),
        ("not-a-token", "invalid_token"),
    ]:
        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == code
        assert response.headers["www-authenticate"] == "Bearer"
    missing = await client.get("/auth/me")
    assert missing.status_code == 401


async def test_logout_makes_the_access_token_fail_at_once(client: httpx.AsyncClient) -> None:
    account = await register(client, label="logout")
    assert (await client.get("/auth/me", headers=account.headers)).status_code == 200
    assert (await client.post("/auth/logout", headers=account.headers)).status_code == 204

    me = await client.get("/auth/me", headers=account.headers)
    assert me.status_code == 401
    assert me.json()["error"]["code"] == "session_revoked"
    refresh = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refresh.status_code == 401


async def test_logout_all_revokes_every_session_of_the_user(client: httpx.AsyncClient) -> None:
    account = await register(client, label="logoutall")
    other_device = await login(client, account.email)
    assert (await client.post("/auth/logout-all", headers=other_device.headers)).status_code == 204
    for headers in (account.headers, other_device.headers):
        assert (await client.get("/auth/me", headers=headers)).status_code == 401
    # A fresh sign-in still works.
    again = await login(client, account.email)
    assert (await client.get("/auth/me", headers=again.headers)).status_code == 200


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client, label="wrongpw")
    wrong = await client.post("/auth/login", json={"email": account.email, "password": "nope"})
    unknown = await client.post(
        "/auth/login", json={"email": "nobody-" + account.email, "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]


async def test_email_is_case_insensitive_and_unique(client: httpx.AsyncClient) -> None:
    account = await register(client, label="case")
    upper = await client.post(
        "/auth/login", json={"email": account.email.upper(), "password": PASSWORD}
    )
    assert upper.status_code == 200
    duplicate = await client.post(
        "/auth/register",
        json={"email": account.email.upper(), "password": PASSWORD, "display_name": "Dup"},
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "email_taken"


async def test_short_passwords_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register",
        json={"email": "short-pw@example.test", "password": "short", "display_name": "S"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "weak_password"


class CountingHasher(PasswordHasher):
    """argon2's own hasher, counting its verifications."""

    verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


async def test_an_unknown_email_costs_one_argon2_verification_like_a_wrong_password(
    runtime: Runtime,
) -> None:
    """Equal cost, not only an equal answer: without the dummy verification an unknown e-mail
    would answer sooner, and the timing would tell which accounts exist."""
    hasher = CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    app = create_app(runtime=dataclasses.replace(runtime, passwords=Passwords(hasher)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("192.0.2.61", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            account = await register(api, label="cost")
            costs = {}
            for path, email, password in (
                ("wrong password", account.email, "not the password"),
                ("unknown e-mail", "nobody-" + account.email, PASSWORD),
            ):
                before = hasher.verifications
                answer = await api.post("/auth/login", json={"email": email, "password": password})
                assert answer.status_code == 401, answer.text
                costs[path] = hasher.verifications - before
    assert costs == {"wrong password": 1, "unknown e-mail": 1}
