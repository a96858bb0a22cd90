"""The OpenID Connect relying party: discovery, JWKS, the authorization request (code flow with
PKCE S256, state, nonce), the token and refresh requests, and ID-token validation.

Authlib does the protocol (AsyncOAuth2Client: client authentication, the PKCE challenge, token
responses and their errors; CodeIDToken: the ID token's claims, azp included) and joserfc the
signatures. Every request to the issuer goes through net.py's address guard (the transport's
every socket is checked against OUTBOUND_ALLOWED_HOSTS), under one deadline, reading at most
MAX_RESPONSE_BYTES uncompressed. Discovery documents and key sets are kept per process for
CACHE_SECONDS; an ID token signed with a key id the cached set lacks refetches it once (the
provider rotated its keys), and that key id refetches nothing more for CACHE_SECONDS (a token
under a key the provider does not publish is refused without asking it again each time).

Authlib is imported by the first sign-in, not when the API starts (tests/test_import_cost.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import structlog
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
)
from joserfc.jwk import KeySet

from taskloom.config import Settings
from taskloom.net import AddressPolicy, TargetNotAllowed, guarded_transport2
from taskloom.sso.errors import SsoRefused

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = structlog.get_logger("taskloom.sso")

CACHE_SECONDS = 600.0
DEADLINE_SECONDS = 10.0
MAX_RESPONSE_BYTES = 1_048_576
LEEWAY_SECONDS = 60


@dataclass(frozen=True)
class ClientConfig:
    """What the relying party needs of a provider row (the secret decrypted)."""

    issuer: str
    client_id: str
    client_secret: str
    scopes: list[str]
    algorithms: list[str]


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    token_auth_method: str


@dataclass
class _Cached:
    discovery: Discovery
    fetched: float
    keys: KeySet | None = None
    keys_fetched: float = 0.0
    # kid -> when an ID token under it, missing from the set, refetched the set
    unknown_kids: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_CACHE: dict[tuple[str, str], _Cached] = {}


class _Capped(httpx2.AsyncBaseTransport):
    """Reads at most MAX_RESPONSE_BYTES of each answer, uncompressed (identity asked for, any
    other encoding refused: a small compressed body may inflate a thousandfold)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self._inner.handle_async_request(request)
        try:
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise httpx2.DecodingError(f"unexpected content encoding {encoding!r}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise httpx2.DecodingError("the provider's answer is too large")
        finally:
            await response.aclose()
        headers = httpx2.Headers(response.headers)
        for name in ("content-length", "transfer-encoding", "content-encoding"):
            headers.pop(name, None)
        return httpx2.Response(response.status_code, headers=headers, content=bytes(body))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _client(settings: Settings, config: ClientConfig | None, **options: Any) -> AsyncOAuth2Client:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    policy = AddressPolicy.from_setting(settings.outbound_allowed_hosts)
    transport = _Capped(guarded_transport2(policy, max_connections=2))
    return AsyncOAuth2Client(
        client_id=config.client_id if config else None,
        client_secret=config.client_secret if config else None,
        transport=transport,
        timeout=DEADLINE_SECONDS,
        trust_env=False,
        follow_redirects=False,
        **options,
    )


def _unreachable(issuer: str, error: BaseException) -> SsoRefused:
    # The reason, never the URL's query or a body (they may hold codes or tokens).
    log.warning("sso_provider_unreachable", issuer=issuer, error=type(error).__name__)
    return SsoRefused("sso_provider_unreachable")


_NETWORK_ERRORS = (httpx2.HTTPError, OSError, TimeoutError, TargetNotAllowed, ValueError)


async def _get_json(settings: Settings, issuer: str, url: str) -> dict[str, Any]:
    try:
        async with asyncio.timeout(DEADLINE_SECONDS), _client(settings, None) as client:
            response = await client.request("GET", url, withhold_token=True)
        if response.status_code != 200:
            raise httpx2.HTTPStatusError(
                f"status {response.status_code}", request=response.request, response=response
            )
        document = response.json()
    except _NETWORK_ERRORS as error:
        raise _unreachable(issuer, error) from None
    if not isinstance(document, dict):
        raise _unreachable(issuer, ValueError("not a JSON object"))
    return document


def _parse_discovery(issuer: str, document: dict[str, Any]) -> Discovery:
    # OpenID Connect Discovery 1.0 §4.3: the issuer in the document is exactly the one asked for.
    if document.get("issuer") != issuer:
        raise SsoRefused(
            "sso_wrong_issuer",
            f"The provider announces issuer {str(document.get('issuer'))[:200]!r}, not the "
            f"configured {issuer!r}.",
        )
    required = ("authorization_endpoint", "token_endpoint", "jwks_uri")
    if not all(isinstance(document.get(k), str) for k in required):
        raise _unreachable(issuer, ValueError("discovery document without its endpoints"))
    methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    method = "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
    return Discovery(
        issuer=issuer,
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        userinfo_endpoint=document.get("userinfo_endpoint"),
        end_session_endpoint=document.get("end_session_endpoint"),
        token_auth_method=method,
    )


async def _cached(settings: Settings, issuer: str) -> _Cached:
    key = (issuer, settings.outbound_allowed_hosts)
    entry = _CACHE.get(key)
    if entry is not None and time.monotonic() - entry.fetched < CACHE_SECONDS:
        return entry
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    discovery = _parse_discovery(issuer, await _get_json(settings, issuer, url))
    entry = _CACHE[key] = _Cached(discovery=discovery, fetched=time.monotonic())
    return entry


async def discover(settings: Settings, issuer: str) -> Discovery:
    """The provider's endpoints (cached for CACHE_SECONDS); SsoRefused when it cannot be
    reached or announces another issuer."""
    return (await _cached(settings, issuer)).discovery


def forget(issuer: str) -> None:
    """Drop what this process keeps of an issuer (its provider was changed or deleted)."""
    for key in [k for k in _CACHE if k[0] == issuer]:
        del _CACHE[key]


async def _keys(settings: Settings, issuer: str, kid: str | None) -> KeySet:
    entry = await _cached(settings, issuer)
    async with entry.lock:
        now = time.monotonic()
        entry.unknown_kids = {
            k: at for k, at in entry.unknown_kids.items() if now - at < CACHE_SECONDS
        }
        stale = entry.keys is None or now - entry.keys_fetched >= CACHE_SECONDS
        # A key id the set lacks refetches it once; one the refetch lacked too, not again.
        unknown = (
            entry.keys is not None
            and not _has_kid(entry.keys, kid)
            and kid not in entry.unknown_kids
        )
        if stale or unknown:
            document = await _get_json(settings, issuer, entry.discovery.jwks_uri)
            try:
                keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as error:
                raise _unreachable(issuer, error) from None
            entry.keys, entry.keys_fetched = keys, time.monotonic()
            if kid is not None and not _has_kid(keys, kid):
                entry.unknown_kids[kid] = entry.keys_fetched
        assert entry.keys is not None
        return entry.keys


def _has_kid(keys: KeySet, kid: str | None) -> bool:
    return kid is None or any(k.kid == kid for k in keys)


def authorization_url(
    discovery: Discovery,
    config: ClientConfig,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_verifier: str,
) -> str:
    """Where to send the browser: the code flow with PKCE (S256), state and nonce."""
    from authlib.oauth2.client import OAuth2Client

    client = OAuth2Client(
        session=None,
        client_id=config.client_id,
        scope=" ".join(config.scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )
    url, _ = client.create_authorization_url(
        discovery.authorization_endpoint, state=state, code_verifier=code_verifier, nonce=nonce
    )
    return str(url)


class ProviderRefusedGrant(Exception):
    """The token endpoint answered an OAuth error (invalid_grant: the grant is gone)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


async def _token_call(
    settings: Settings, config: ClientConfig, discovery: Discovery, **form: str
) -> dict[str, Any]:
    from authlib.integrations.base_client import OAuthError

    try:
        async with (
            asyncio.timeout(DEADLINE_SECONDS),
            _client(settings, config, token_endpoint_auth_method=discovery.token_auth_method) as c,
        ):
            if form.get("grant_type") == "refresh_token":
                token = await c.refresh_token(
                    discovery.token_endpoint, refresh_token=form["refresh_token"]
                )
            else:
                token = await c.fetch_token(discovery.token_endpoint, **form)
    except OAuthError as refused:
        raise ProviderRefusedGrant(str(refused.error)) from None
    except _NETWORK_ERRORS as error:
        raise _unreachable(config.issuer, error) from None
    return dict(token)


async def exchange_code(
    settings: Settings,
    config: ClientConfig,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
) -> dict[str, Any]:
    """The token response for an authorization code (its ID token not yet validated)."""
    discovery = await discover(settings, config.issuer)
    try:
        return await _token_call(
            settings,
            config,
            discovery,
            grant_type="authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
    except ProviderRefusedGrant as refused:
        raise SsoRefused(
            "sso_provider_error", f"The provider refused the code ({refused.error})."
        ) from None


async def refresh(settings: Settings, config: ClientConfig, refresh_token: str) -> dict[str, Any]:
    """A refresh at the provider; ProviderRefusedGrant when it refuses (invalid_grant)."""
    discovery = await discover(settings, config.issuer)
    return await _token_call(
        settings, config, discovery, grant_type="refresh_token", refresh_token=refresh_token
    )


_CLAIM_REASONS = {
    "iss": "sso_wrong_issuer",
    "aud": "sso_wrong_audience",
    "azp": "sso_wrong_audience",
    "exp": "sso_token_expired",
    "nonce": "sso_nonce_mismatch",
}


async def validate_id_token(
    settings: Settings, config: ClientConfig, id_token: str, *, nonce: str | None
) -> dict[str, Any]:
    """The ID token's claims once its signature (an allowed algorithm, a key of the issuer's
    set) and claims hold: iss, aud (and azp when it names several audiences), exp and iat
    with LEEWAY_SECONDS, sub, and the nonce when one is given (a sign-in; a refreshed ID token
    repeats the first one's, if any). SsoRefused names what failed."""
    from authlib.oidc.core import CodeIDToken

    try:
        header = jws.extract_compact(id_token.encode()).protected
    except (JoseError, ValueError):
        raise SsoRefused("sso_invalid_id_token") from None
    if header.get("alg") not in config.algorithms:
        raise SsoRefused(
            "sso_invalid_id_token",
            f"The ID token is signed with {str(header.get('alg'))[:20]!r}, which this provider's "
            "settings do not allow.",
        )
    keys = await _keys(settings, config.issuer, header.get("kid"))
    try:
        token = jwt.decode(id_token, keys, algorithms=config.algorithms)
    except (BadSignatureError, JoseError, ValueError):
        raise SsoRefused("sso_invalid_id_token") from None
    claims = CodeIDToken(
        token.claims,
        token.header,
        options={
            "iss": {"essential": True, "value": config.issuer},
            "aud": {"essential": True, "value": config.client_id},
            "sub": {"essential": True},
        },
        params={"nonce": nonce, "client_id": config.client_id},
    )
    try:
        claims.validate(leeway=LEEWAY_SECONDS)
    except ExpiredTokenError:
        raise SsoRefused("sso_token_expired") from None
    except ClaimError as error:
        names = error.claim.split(",")
        reason = next((_CLAIM_REASONS[n] for n in names if n in _CLAIM_REASONS), None)
        raise SsoRefused(reason or "sso_invalid_id_token") from None
    return dict(claims)


async def userinfo(
    settings: Settings, config: ClientConfig, access_token: str
) -> dict[str, Any] | None:
    """The userinfo endpoint's claims, or None when the provider has none."""
    discovery = await discover(settings, config.issuer)
    if not discovery.userinfo_endpoint:
        return None
    try:
        async with asyncio.timeout(DEADLINE_SECONDS), _client(settings, None) as client:
            response = await client.request(
                "GET",
                discovery.userinfo_endpoint,
                withhold_token=True,
                headers={"Authorization": f"Bearer {access_token}"},
            )
        found = response.json() if response.status_code == 200 else None
    except _NETWORK_ERRORS as error:
        raise _unreachable(config.issuer, error) from None
    return found if isinstance(found, dict) else None
