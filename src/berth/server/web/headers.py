"""Security headers on every answer (pure ASGI, so streamed answers get them too).

The pages run only our own scripts and styles (no inline script, no CDN) and are never framed. The API's
interactive documentation (/docs, /redoc) loads FastAPI's CDN assets and an inline script, so it keeps
its own policy: everything but the CSP.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def csp(style_nonce: str | None = None) -> str:
    """The policy; `style_nonce` also admits <style> elements carrying that per-response nonce (a page whose
    library writes its CSS into <style> elements, xterm.js 6: see static/terminal.js). A route that sets its
    own content-security-policy header keeps it."""
    style = "style-src 'self'" + (f" 'nonce-{style_nonce}'" if style_nonce else "")
    return "; ".join([
        "default-src 'self'", "script-src 'self'", style, "img-src 'self' data:", "font-src 'self'",
        "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ])


CSP = csp()
_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
_DOCS = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_COMMON)
        if not scope["path"].startswith(_DOCS):
            extra.append((b"content-security-policy", CSP.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((n, v) for n, v in extra if n not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
