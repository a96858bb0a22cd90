"""`taskloom keys rotate` in a deployment of its own: a new key put first, the command
re-encrypts every connection (and organization secret), old ciphertexts decrypt until then, and
a wrong key fails clearly."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import open_runtime
from taskloom.secrets.service import bound_to as secret_bound_to
from taskloom.tools.service import bound_to
from taskloom.triggers.service import bound_to as trigger_bound_to
from tests.cli_support import clean_env, run_taskloom
from tests.conftest import fresh_deployment
from tests.factories import register

OLD = "k1:" + base64.b64encode(b"1" * 32).decode()
NEW = "k2:" + base64.b64encode(b"2" * 32).decode()


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="keys") as settings:
        yield settings.model_copy(update={"credential_encryption_keys": SecretStr(OLD)})


async def _stored(settings: Settings) -> list[tuple[str, str, bytes, str, str]]:
    runtime = await open_runtime(settings)
    try:
        async with system_transaction(runtime.database) as db:
            rows = await db.execute(
                text("select id, org_id, encrypted_credentials, key_id, name from tool_connections")
            )
            return [(str(r[0]), str(r[1]), bytes(r[2]), r[3], r[4]) for r in rows]
    finally:
        await runtime.close()


async def test_rotation_re_encrypts_under_the_new_key_and_old_keys_decrypt_until_then(
    deployment: Settings, tmp_path: Path
) -> None:
    runtime = await open_runtime(deployment)
    app = create_app(runtime=runtime)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                owner = await register(client, label="keys", organization_name="Keys Org")
                for name in ("gh-1", "gh-2"):
                    created = await client.post(
                        "/api/connections",
                        json={"provider": "github", "name": name, "credentials": {"token": name}},
                        headers=owner.headers,
                    )
                    assert created.status_code == 201, created.text
                hook = await client.post(
                    "/api/webhooks",
                    json={"url": "https://example.com/hook", "events": ["ping"]},
                    headers=owner.headers,
                )
                assert hook.status_code == 201, hook.text
                workflow = await client.post(
                    "/api/workflows",
                    json={
                        "name": "w",
                        "definition": {
                            "steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]
                        },
                    },
                    headers=owner.headers,
                )
                trigger = await client.post(
                    f"/api/workflows/{workflow.json()['id']}/triggers",
                    json={"kind": "webhook", "verification": "github"},
                    headers=owner.headers,
                )
                assert trigger.status_code == 201, trigger.text
                rotated_secret = await client.post(
                    f"/api/triggers/{trigger.json()['id']}/rotate-secret",
                    json={},
                    headers=owner.headers,
                )
                assert rotated_secret.status_code == 200, rotated_secret.text
                org_secret = await client.post(
                    "/api/secrets",
                    json={"name": "ROTATED", "value": "rotated-value-1"},
                    headers=owner.headers,
                )
                assert org_secret.status_code == 201, org_secret.text
    finally:
        await runtime.close()
    before = await _stored(deployment)
    assert {row[3] for row in before} == {"k1"}

    both = CredentialCipher.from_settings(
        deployment.model_copy(update={"credential_encryption_keys": SecretStr(f"{NEW},{OLD}")})
    )
    for conn_id, org_id, blob, key_id, name in before:  # k1 still decrypts before rotation
        assert both.decrypt(key_id, blob, bound_to=bound_to(conn_id, org_id)) == {"token": name}

    env = clean_env(
        TASKLOOM_ENV="test",
        DATABASE_URL=str(deployment.database_url),
        DATABASE_APP_ROLE=deployment.database_app_role,
        REDIS_URL=str(deployment.redis_url),
        REDIS_KEY_PREFIX=str(deployment.redis_key_prefix),
        CREDENTIAL_ENCRYPTION_KEYS=f"{NEW},{OLD}",
    )
    rotated = await run_taskloom("keys", "rotate", env=env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "current key 'k2': 5 re-encrypted, 0 already current" in rotated.stderr

    after = await _stored(deployment)
    assert {row[3] for row in after} == {"k2"}
    only_new = CredentialCipher([("k2", b"2" * 32)])
    for conn_id, org_id, blob, key_id, name in after:
        assert only_new.decrypt(key_id, blob, bound_to=bound_to(conn_id, org_id)) == {"token": name}
        with pytest.raises(CredentialKeyError, match="key 'k2', which is not in"):
            CredentialCipher([("k1", b"1" * 32)]).decrypt(
                key_id, blob, bound_to=bound_to(conn_id, org_id)
            )

    again = await run_taskloom("keys", "rotate", env=env, cwd=tmp_path)
    assert "0 re-encrypted, 5 already current" in again.stderr
    async with system_transaction((runtime := await open_runtime(deployment)).database) as db:
        webhook_keys = (await db.execute(text("select secret_key_id from webhook_endpoints"))).all()
        stored = (
            await db.execute(
                text(
                    "select id, org_id, secret_key_id, encrypted_secret, "
                    "encrypted_previous_secret from workflow_triggers"
                )
            )
        ).one()
        kept = (
            await db.execute(text("select id, org_id, key_id, encrypted_value from org_secrets"))
        ).one()
    await runtime.close()
    assert kept.key_id == "k2"
    secret_at = secret_bound_to(kept.id, kept.org_id)
    assert only_new.decrypt("k2", kept.encrypted_value, bound_to=secret_at) == {
        "value": "rotated-value-1"
    }
    assert [tuple(r) for r in webhook_keys] == [("k2",)]
    trigger_at = trigger_bound_to(stored.id, stored.org_id)
    assert stored.secret_key_id == "k2"
    for blob in (stored.encrypted_secret, stored.encrypted_previous_secret):
        assert only_new.decrypt("k2", blob, bound_to=trigger_at)["secret"].startswith("whsec_")

    # k2 is listed with the wrong bytes: the rows under k2 cannot move to k3.
    wrong_keys = (
        f"k3:{base64.b64encode(b'3' * 32).decode()},k2:{base64.b64encode(b'x' * 32).decode()}"
    )
    wrong = await run_taskloom(
        "keys", "rotate", env={**env, "CREDENTIAL_ENCRYPTION_KEYS": wrong_keys}, cwd=tmp_path
    )
    assert wrong.returncode == 1
    assert "do not decrypt with key 'k2'" in " ".join(wrong.stderr.split())  # Rich wraps lines
    assert "x" * 32 not in wrong.stderr + wrong.stdout
