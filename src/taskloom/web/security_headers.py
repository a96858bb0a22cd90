"""Security headers on every response (plain ASGI middleware, so streamed bodies pass through).

The Content-Security-Policy allows only this origin's own scripts, styles and images: no inline
script or style runs, nothing loads from elsewhere, no page may frame ours. Swagger UI (/docs)
loads its assets from a CDN with an inline bootstrap script, so it is left without a CSP.
Headers a route set itself (e.g. the GDPR download's stricter Referrer-Policy) are kept.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS = "max-age=31536000; includeSubDomains"
_NO_CSP_PREFIXES = ("/docs",)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, production: bool) -> None:
        self.app = app
        self.production = production

    def _headers(self, path: str) -> list[tuple[str, str]]:
        headers = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")]
        if not path.startswith(_NO_CSP_PREFIXES):
            headers.append(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        if self.production:  # only over HTTPS in practice; a development host must not pin it
            headers.append(("Strict-Transport-Security", HSTS))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._headers(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
