"""Security headers on every response, and a Content-Security-Policy on the HTML pages.

The dashboard shows reports in ``srcdoc`` frames, which inherit the page's policy and
run plotly's inline script, so its policy allows inline scripts and instead closes the
ways out: the page may talk to this server alone (``connect-src 'self'``), send no
form anywhere and be framed by no one. A report served on its own needs nothing from
any server at all.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
REPORT_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "img-src data: blob:",
        "font-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    ]
)
_EVERY_RESPONSE = {
    "X-Content-Type-Options": "nosniff",
    # No page of this service is meant to be framed by another site (clickjacking).
    "X-Frame-Options": "DENY",
    # URLs carry model names and study ids: no other site needs to learn them.
    "Referrer-Policy": "no-referrer",
}


class SecurityHeadersMiddleware:
    """Adds the headers a response does not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _EVERY_RESPONSE.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
