"""The HTTP client of `taskloom workflows pull|push|run`: the server named by `TASKLOOM_URL`,
called with the API key in `TASKLOOM_API_KEY` (the command line reads both). Every answer that
is not a success becomes a RemoteError carrying the server's JSON error (code and message)."""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT_SECONDS = 30.0


class RemoteError(Exception):
    """The server refused (or could not be reached): what to tell the person."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{self.message} ({where}{f' {self.code}' if self.code else ''})"


class UsageError(Exception):
    """The command cannot start: a setting is missing or an argument is wrong (exit 2)."""


class Remote:
    def __init__(self, url: str, api_key: str, *, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=TIMEOUT_SECONDS,
            transport=transport,
        )

    @classmethod
    def connect(cls, url: str | None, api_key: str | None) -> Remote:
        """The server at `url` (`TASKLOOM_URL`) with `api_key` (`TASKLOOM_API_KEY`), or
        UsageError naming what is missing."""
        url, api_key = (url or "").strip(), (api_key or "").strip()
        if not url:
            raise UsageError("TASKLOOM_URL is not set: the server's address, http(s)://host:port")
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"TASKLOOM_URL must start with http:// or https:// (got {url!r})")
        if not api_key:
            raise UsageError(
                "TASKLOOM_API_KEY is not set: create an API key (Settings > API keys) and export it"
            )
        return cls(url, api_key)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """The response of a successful call, or RemoteError with the server's message."""
        try:
            response = self._client.request(method, path, json=json, headers=headers, params=params)
        except httpx.HTTPError as failed:
            raise RemoteError(f"cannot reach {self.url}: {failed}") from None
        if response.is_success:
            return response
        code, message = None, response.text[:500] or response.reason_phrase
        try:
            error = response.json().get("error", {})
            code, message = error.get("code"), error.get("message", message)
            for item in (error.get("details") or {}).get("errors", [])[:20]:
                message += f"\n  {'.'.join(str(p) for p in item.get('loc', []))}: "
                message += str(item.get("message") or item.get("msg"))
        except (ValueError, AttributeError):
            pass
        if response.status_code == 401:
            message = f"the API key was not accepted: {message}"
        elif response.status_code == 403:
            message = f"the API key may not do this: {message}"
        raise RemoteError(message, status=response.status_code, code=code)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None).json()

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, json=body).json()

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, json=body).json()

    def delete(self, path: str) -> None:
        self.call("DELETE", path)

    def put_workflow(self, workflow_id: str, body: dict[str, Any], *, version: int) -> Any:
        """Replace the workflow while it is still at `version` (else 412)."""
        return self.call(
            "PUT", f"/api/workflows/{workflow_id}", json=body, headers={"If-Match": f'"{version}"'}
        ).json()
