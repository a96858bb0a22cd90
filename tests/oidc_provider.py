"""A real OpenID Connect provider for the SSO tests: node-oidc-provider (OpenID-certified),
run under Node.js from tests/oidc/provider (server.mjs, pinned by package-lock.json), one
process per `OidcProvider`, configured per test with its clients and users.

Its sign-in page is ours, so browsers and httpx log in the same way: `GET /interaction/<uid>`
answers a form (inputs `login` — the account id or its email — and `password`, submit button
`#sign-in`) posted to `/interaction/<uid>/login`; a right password logs in and consents to every
requested scope and claim at once (offline_access included), a wrong one answers 401 with the
form again. The logout page (RP-initiated logout) has one button, `#sign-out`.

Test-only control endpoints change the provider while it runs: a user's claims
(`set_claims`), revoking a user's grants and tokens (`revoke`), rewriting the claims of the
next ID token the token endpoint returns, re-signed with the provider's own key (`tamper_next`),
rotating its signing key (`rotate_key`), signing the next ID token with a key it never
publishes (`sign_next_with_stranger_key`) and counting the fetches of its JWKS
(`jwks_requests`). `stop()` then `start()` brings it back on the same port (with a new key).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import free_port, missing_program

PROVIDER_DIR = Path(__file__).parent / "oidc" / "provider"
# Debian 12 and Ubuntu 24.04 package Node.js 18: too old (Debian 13's 20 will do, or NodeSource).
_NEEDS_NODE = "the SSO tests need Node.js >= 20 and npm (apt-get install nodejs npm)"
_INSTALLED: list[bool] = []  # once per test session


def _installed_matches_lock() -> bool:
    """node_modules/.package-lock.json, npm's record of what it installed, names the versions
    and hashes of package-lock.json (so `npm ci` run by CI or by hand counts too)."""
    installed = PROVIDER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists():
        return False
    wanted = json.loads((PROVIDER_DIR / "package-lock.json").read_text())["packages"]
    have = json.loads(installed.read_text())["packages"]
    return all(
        (have.get(path, {}).get("version"), have.get(path, {}).get("integrity"))
        == (meta.get("version"), meta.get("integrity"))
        for path, meta in wanted.items()
        if path
    )


def ensure_provider_installed() -> None:
    """Install the provider's npm packages (`npm ci`) when node_modules is missing or differs
    from package-lock.json; skip (fail under CI=true) without Node.js >= 20 and npm."""
    if _INSTALLED:
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing_program(_NEEDS_NODE)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 20:
        missing_program(f"{_NEEDS_NODE}; found node {version.stdout.strip()}")
    # One install at a time across concurrent test sessions; the others wait, then find it.
    checkout = hashlib.sha256(str(PROVIDER_DIR).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"taskloom-oidc-npm-{checkout}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed_matches_lock():
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=PROVIDER_DIR,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(f"npm ci in {PROVIDER_DIR} failed:\n{result.stdout}{result.stderr}")
    _INSTALLED.append(True)


def web_client(
    client_id: str,
    client_secret: str,
    redirect_uris: list[str],
    *,
    post_logout_redirect_uris: list[str] | None = None,
    auth_method: str = "client_secret_basic",
) -> dict[str, Any]:
    """A confidential client of the code flow that may also use refresh tokens."""
    return {
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": post_logout_redirect_uris or [],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method,
    }


class OidcProvider:
    """One provider process. `users` maps an account id (the ID token's `sub`) to
    `{"password": ..., "claims": {"email", "email_verified", "name", "groups", "xms_edov"}}`.
    `issuer_host="localhost"` makes it announce `http://localhost:<port>` while tests reach it
    at `.url` (127.0.0.1): a provider whose issuer differs from the configured one."""

    def __init__(
        self,
        directory: Path,
        *,
        clients: list[dict[str, Any]],
        users: Mapping[str, Mapping[str, Any]],
        issuer_host: str = "127.0.0.1",
        rp_initiated_logout: bool = True,
        ttl: Mapping[str, int] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = f"http://{issuer_host}:{self.port}"
        self._directory = directory
        self._config = {
            "port": self.port,
            "issuer": self.issuer,
            "clients": clients,
            "users": users,
            "rpInitiatedLogout": rp_initiated_logout,
            "ttl": dict(ttl or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> OidcProvider:
        ensure_provider_installed()
        config = self._directory / f"oidc-provider-{self.port}.json"
        config.write_text(json.dumps(self._config))
        log = self._directory / f"oidc-provider-{self.port}.log"
        with open(log, "wb") as output:
            self._process = subprocess.Popen(
                ["node", str(PROVIDER_DIR / "server.mjs"), str(config)],
                cwd=PROVIDER_DIR,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(
                    f"oidc-provider exited with {self._process.returncode}:\n{log.read_text()}"
                )
            try:
                discovery = httpx.get(f"{self.url}/.well-known/openid-configuration", timeout=1)
                if discovery.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"oidc-provider did not answer within 20 s:\n{log.read_text()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def discovery(self) -> dict[str, Any]:
        """The provider's discovery document (its endpoints carry `.issuer`'s host)."""
        response = httpx.get(f"{self.url}/.well-known/openid-configuration")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def set_claims(self, account: str, **claims: Any) -> dict[str, Any]:
        """Change a user's claims from the next token on (None removes one); returns them all."""
        changed: dict[str, Any] = self._control(f"/__test/users/{account}/claims", claims)["claims"]
        return changed

    def revoke(self, account: str, *, sessions: bool = False) -> int:
        """Drop the user's grants and tokens (a refresh grant then fails with invalid_grant);
        with `sessions`, their sign-ins at the provider too. Returns how many were dropped."""
        answer = self._control(f"/__test/users/{account}/revoke", {"sessions": sessions})
        return int(answer["revoked"])

    def tamper_next(self, **claims: Any) -> None:
        """Override claims of the ID token in the next token response (None removes one,
        e.g. `exp=int(time.time()) - 60`, `aud="other"`, `nonce=None`), re-signed with the
        provider's own key under the same kid, so its signature still verifies."""
        self._control("/__test/tamper", claims)

    def rotate_key(self) -> str:
        """A new signing key from now on: the JWKS publishes only it (the old one is gone)
        and ID tokens are signed with it under its kid. Returns the kid."""
        return str(self._control("/__test/rotate", {})["kid"])

    def sign_next_with_stranger_key(self) -> str:
        """Sign the next ID token with a key the JWKS never publishes (the same key each
        time, so the same kid). Returns that kid."""
        return str(self._control("/__test/stranger_next", {})["kid"])

    def jwks_requests(self) -> int:
        """How many times the JWKS endpoint was fetched since this process started."""
        response = httpx.get(f"{self.url}/__test/jwks_requests")
        response.raise_for_status()
        return int(response.json()["count"])

    def _control(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}{path}", json=body)
        if response.status_code != 200:
            raise AssertionError(f"{path}: {response.status_code} {response.text}")
        answer: dict[str, Any] = response.json()
        return answer


ProviderFactory = Callable[..., OidcProvider]


@pytest.fixture(scope="module")
def oidc_provider_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderFactory]:
    """Start providers: `oidc_provider_factory(clients=[web_client(...)], users={...})`, with
    OidcProvider's keywords; each runs until the end of the module. Sign in with
    `sign_in_at_provider` (httpx) or, in a browser, fill `input[name=login]` and
    `input[name=password]` on the provider's page and click `#sign-in`."""
    directory = tmp_path_factory.mktemp("oidc-provider")
    started: list[OidcProvider] = []

    def start(**options: Any) -> OidcProvider:
        provider = OidcProvider(directory, **options)
        started.append(provider)
        return provider.start()

    yield start
    for provider in started:
        provider.stop()


# --- driving a sign-in with httpx ---------------------------------------------------------------

_REDIRECTS = {301, 302, 303, 307, 308}
_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"')
_HIDDEN_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


async def _walk(
    client: httpx.AsyncClient, response: httpx.Response, stop_at: str
) -> httpx.URL | httpx.Response:
    """Follow redirects from `response`: the first URL starting with `stop_at` (not
    requested), or the sign-in page when one answers on the way."""
    for _ in range(20):
        if response.status_code == 200 and 'id="sign-in"' in response.text:
            return response
        if response.status_code not in _REDIRECTS:
            raise AssertionError(
                f"{response.status_code} at {response.url} before reaching {stop_at}:\n"
                f"{response.text[:500]}"
            )
        location = response.url.join(response.headers["location"])
        if str(location).startswith(stop_at):
            return location
        response = await client.get(location)
    raise AssertionError(f"more than 20 redirects before reaching {stop_at}")


async def sign_in_at_provider(
    client: httpx.AsyncClient, authorize_url: str, login: str, password: str, stop_at: str
) -> httpx.URL:
    """Open `authorize_url` (the provider's authorization endpoint with its query, or an RP
    URL redirecting there), sign in on the provider's form when it asks (not when `client`'s
    cookies still hold a sign-in there) and follow the redirects until one leads to a URL
    starting with `stop_at` (the RP's redirect_uri): returns that URL, not requested.
    `client` must not follow redirects itself."""
    reached = await _walk(client, await client.get(authorize_url), stop_at)
    if isinstance(reached, httpx.URL):
        return reached
    action = _FORM_ACTION.search(reached.text)
    assert action, f"no sign-in form at {reached.url}"
    response = await client.post(
        reached.url.join(action.group(1)), data={"login": login, "password": password}
    )
    if response.status_code == 401:
        raise AssertionError(f"the provider refused the sign-in of {login!r}")
    reached = await _walk(client, response, stop_at)
    if isinstance(reached, httpx.Response):
        raise AssertionError(f"the provider asked for a sign-in again at {reached.url}")
    return reached


async def sign_out_at_provider(
    client: httpx.AsyncClient, end_session_url: str, stop_at: str
) -> httpx.URL:
    """Open the provider's end_session URL (with its query), confirm on its page
    (`#sign-out`) and follow the redirects to the URL starting with `stop_at` (the
    post_logout_redirect_uri): returns it, not requested."""
    page = await client.get(end_session_url)
    action = _FORM_ACTION.search(page.text)
    assert action, f"no logout form at {end_session_url}: {page.status_code} {page.text[:300]}"
    fields = dict(_HIDDEN_INPUT.findall(page.text)) | {"logout": "yes"}
    response = await client.post(page.url.join(action.group(1)), data=fields)
    reached = await _walk(client, response, stop_at)
    assert isinstance(reached, httpx.URL), f"a sign-in page at {reached.url} after the logout"
    return reached
