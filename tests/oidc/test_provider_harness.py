"""The SSO tests' OpenID Connect provider (tests/oidc_provider.py) does what they rely on: the
code flow with PKCE, groups in the ID token, refresh tokens for offline_access, RP-initiated
logout, and its control endpoints (claims, revocation, tampered ID tokens)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import jwt
import pytest

from tests.oidc_provider import (
    OidcProvider,
    ProviderFactory,
    sign_in_at_provider,
    sign_out_at_provider,
    web_client,
)

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never requested: the flow stops there
AFTER_LOGOUT = "http://127.0.0.1:9/signed-out"
USERS = {
    account: {
        "password": f"{account}-password",
        "claims": {
            "email": f"{account}@example.com",
            "email_verified": True,
            "name": account.title(),
            "groups": ["engineering", "taskloom-admins"],
        },
    }
    for account in ["alice", "carol", "dave", "erin"]
}


@pytest.fixture(scope="module")
def provider(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    return oidc_provider_factory(
        clients=[
            web_client(
                "basic-rp", "basic-secret", [REDIRECT_URI], post_logout_redirect_uris=[AFTER_LOGOUT]
            ),
            web_client("post-rp", "post-secret", [REDIRECT_URI], auth_method="client_secret_post"),
        ],
        users=USERS,
    )


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    """A user agent with its own cookies at the provider."""
    async with httpx.AsyncClient(follow_redirects=False) as client:
        yield client


async def _token_request(
    provider: OidcProvider, client_id: str, form: dict[str, str]
) -> httpx.Response:
    """A token request with the client's registered authentication (basic or post)."""
    endpoint = provider.discovery()["token_endpoint"]
    secret = {"basic-rp": "basic-secret", "post-rp": "post-secret"}[client_id]
    async with httpx.AsyncClient() as rp:
        if client_id == "post-rp":
            credentials = {"client_id": client_id, "client_secret": secret}
            return await rp.post(endpoint, data=form | credentials)
        return await rp.post(endpoint, data=form, auth=(client_id, secret))


def _authorize_url(
    provider: OidcProvider, client_id: str, scope: str
) -> tuple[str, dict[str, str]]:
    """An authorization request with PKCE, as an RP sends it, and what the RP keeps of it."""
    kept = {k: secrets.token_urlsafe(32) for k in ["verifier", "state", "nonce"]}
    challenge = base64.urlsafe_b64encode(hashlib.sha256(kept["verifier"].encode()).digest())
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": kept["state"],
        "nonce": kept["nonce"],
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    return f"{provider.discovery()['authorization_endpoint']}?{urlencode(query)}", kept


async def _sign_in(
    provider: OidcProvider,
    browser: httpx.AsyncClient,
    account: str,
    *,
    client_id: str = "basic-rp",
    scope: str = "openid email profile groups",
) -> tuple[dict[str, Any], str]:
    """The code flow with PKCE: the token response and the nonce sent."""
    authorize, kept = _authorize_url(provider, client_id, scope)
    callback = await sign_in_at_provider(
        browser, authorize, account, f"{account}-password", REDIRECT_URI
    )
    params = parse_qs(callback.query.decode())
    assert params["state"] == [kept["state"]]
    assert params["iss"] == [provider.issuer]
    response = await _token_request(
        provider,
        client_id,
        {
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": kept["verifier"],
        },
    )
    assert response.status_code == 200, response.text
    return response.json(), kept["nonce"]


def _verified(provider: OidcProvider, id_token: str, audience: str = "basic-rp") -> dict[str, Any]:
    """The ID token's claims, its RS256 signature checked against the provider's JWKS."""
    keys = jwt.PyJWKSet.from_dict(httpx.get(provider.discovery()["jwks_uri"]).json())
    key = keys[jwt.get_unverified_header(id_token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        id_token, key=key, algorithms=["RS256"], audience=audience, issuer=provider.issuer
    )
    return claims


def test_discovery_announces_the_code_flow_with_s256_and_rp_initiated_logout(
    provider: OidcProvider,
) -> None:
    document = provider.discovery()

    assert document["issuer"] == provider.url
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "end_session_endpoint",
    ]:
        assert document[endpoint].startswith(f"{provider.url}/")
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "email", "profile", "groups", "offline_access"} <= set(
        document["scopes_supported"]
    )
    assert "RS256" in document["id_token_signing_alg_values_supported"]


def test_a_provider_without_rp_initiated_logout_announces_no_end_session_endpoint(
    oidc_provider_factory: ProviderFactory,
) -> None:
    provider = oidc_provider_factory(clients=[], users={}, rp_initiated_logout=False)

    assert "end_session_endpoint" not in provider.discovery()


def test_a_localhost_issuer_is_announced_while_the_provider_answers_on_127_0_0_1(
    oidc_provider_factory: ProviderFactory,
) -> None:
    provider = oidc_provider_factory(clients=[], users={}, issuer_host="localhost")

    assert provider.issuer == f"http://localhost:{provider.port}"
    assert provider.discovery()["issuer"] == provider.issuer


@pytest.mark.parametrize("client_id", ["basic-rp", "post-rp"])
async def test_the_code_flow_gives_an_id_token_with_email_groups_and_the_nonce(
    provider: OidcProvider, browser: httpx.AsyncClient, client_id: str
) -> None:
    tokens, nonce = await _sign_in(provider, browser, "alice", client_id=client_id)

    claims = _verified(provider, tokens["id_token"], audience=client_id)
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice"
    assert claims["groups"] == ["engineering", "taskloom-admins"]
    assert claims["nonce"] == nonce
    assert "refresh_token" not in tokens  # no offline_access asked


async def test_an_authorization_request_without_pkce_is_refused(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    query = {
        "response_type": "code",
        "client_id": "basic-rp",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": "s",
    }
    response = await browser.get(
        f"{provider.discovery()['authorization_endpoint']}?{urlencode(query)}"
    )

    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(REDIRECT_URI)
    assert parse_qs(location.query.decode())["error"] == ["invalid_request"]


async def test_a_wrong_password_is_refused_on_the_sign_in_form(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    authorize, _ = _authorize_url(provider, "basic-rp", "openid")

    with pytest.raises(AssertionError, match="refused the sign-in of 'alice'"):
        await sign_in_at_provider(browser, authorize, "alice", "wrong", REDIRECT_URI)


async def test_offline_access_gives_a_refresh_token_that_works_until_the_user_is_revoked(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    tokens, _ = await _sign_in(provider, browser, "dave", scope="openid groups offline_access")
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}

    refreshed = await _token_request(provider, "basic-rp", refresh)
    assert refreshed.status_code == 200, refreshed.text
    assert _verified(provider, refreshed.json()["id_token"])["groups"] == [
        "engineering",
        "taskloom-admins",
    ]

    assert provider.revoke("dave") > 0
    refresh["refresh_token"] = refreshed.json().get("refresh_token", tokens["refresh_token"])
    refused = await _token_request(provider, "basic-rp", refresh)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


async def test_changed_claims_are_in_the_next_id_token(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    tokens, _ = await _sign_in(provider, browser, "carol")
    assert _verified(provider, tokens["id_token"])["groups"] == ["engineering", "taskloom-admins"]

    changed = provider.set_claims(
        "carol", groups=["engineering"], email_verified=False, xms_edov=True, name=None
    )
    assert changed == {
        "email": "carol@example.com",
        "email_verified": False,
        "groups": ["engineering"],
        "xms_edov": True,
    }
    # Carol is still signed in at the provider: the second flow shows no form.
    tokens, _ = await _sign_in(provider, browser, "carol")

    claims = _verified(provider, tokens["id_token"])
    assert claims["groups"] == ["engineering"]
    assert claims["email_verified"] is False
    assert claims["xms_edov"] is True
    assert "name" not in claims


async def test_a_tampered_id_token_carries_the_override_and_still_verifies(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    provider.tamper_next(aud="other", nonce=None)
    tampered, _ = await _sign_in(provider, browser, "erin")

    claims = _verified(provider, tampered["id_token"], audience="other")
    assert claims["sub"] == "erin"
    assert "nonce" not in claims
    # Only the next token response was tampered with.
    tokens, nonce = await _sign_in(provider, browser, "erin")
    assert _verified(provider, tokens["id_token"])["nonce"] == nonce


async def test_rp_initiated_logout_ends_the_sign_in_at_the_provider(
    provider: OidcProvider, browser: httpx.AsyncClient
) -> None:
    tokens, _ = await _sign_in(provider, browser, "alice")
    query = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT}

    reached = await sign_out_at_provider(
        browser, f"{provider.discovery()['end_session_endpoint']}?{urlencode(query)}", AFTER_LOGOUT
    )

    assert str(reached).startswith(AFTER_LOGOUT)
    # Signed out: the next authorization request shows the sign-in form again.
    authorize, _ = _authorize_url(provider, "basic-rp", "openid email profile groups")
    redirect = await browser.get(authorize)
    page = await browser.get(redirect.url.join(redirect.headers["location"]))
    assert 'id="sign-in"' in page.text
