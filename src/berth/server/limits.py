"""Request limits applied before any route runs: body size (413) and control characters in the URL (422).

Body size is counted on the bytes as they arrive, not only from Content-Length (a chunked body has none):
past the limit the app is told the client went away, whatever it answers is dropped, and the client gets
413. Three classes of routes, each with its setting:

- workspace uploads (a pack, a snapshot manifest) and bodies to a session's web app (``/s/<id>/app/``):
  ``max_upload_bytes``;
- batches supervisors and agents send (console lines, metric samples, missing-chunk queries, pack reads):
  ``max_batch_bytes``;
- everything else: ``max_body_bytes``.

No name or id berth knows holds a control character, and a NUL reaching a query is a database error on
PostgreSQL, so a URL holding one is refused here, once for every route.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.errors import InvalidInput, TooLarge
from berth.settings import ServerSettings

_UPLOADS = re.compile(r"/api/v1/workspaces/sessions/[^/]+/(packs|snapshots)/[^/]+")
_SESSION_APPS = re.compile(r"/s/[^/]+/app/.*")  # streamed to a session's own web app (file uploads)
_BATCHES = re.compile(r"/api/v1/(workspaces/sessions/[^/]+/missing|workspaces/snapshots/[^/]+/read"
                      r"|sessions/[^/]+/supervisor/(events|metrics)|workers/[^/]+/metrics)")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class RequestLimits:
    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app = app
        self.settings = settings

    def limit_for(self, method: str, path: str) -> tuple[int, str]:
        s = self.settings
        if (method == "PUT" and _UPLOADS.fullmatch(path)) or _SESSION_APPS.fullmatch(path):
            return s.max_upload_bytes, "BERTH_MAX_UPLOAD_BYTES"
        if method == "POST" and _BATCHES.fullmatch(path):
            return s.max_batch_bytes, "BERTH_MAX_BATCH_BYTES"
        return s.max_body_bytes, "BERTH_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bad_url = _url_problem(scope)
        if bad_url is not None:
            await _answer(bad_url, scope, receive, send)
            return
        limit, setting = self.limit_for(scope["method"], scope["path"])
        too_large = TooLarge(f"the request body is larger than {_size(limit)} (the server's {setting})")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(too_large, scope, receive, send)
            return
        received, exceeded, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # the app sees a client that went away; the 413 below is the answer
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it never got whole is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _answer(too_large, scope, receive, send)


def _url_problem(scope: Scope) -> InvalidInput | None:
    path = scope.get("path", "")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in path):
        return InvalidInput("the URL path contains a control character", field="path")
    if _CONTROL.search(unquote_to_bytes(scope.get("query_string", b""))):
        return InvalidInput("the query string contains a control character", field="query")
    return None


async def _answer(error: InvalidInput | TooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(error.to_body(), status_code=error.http_status)(scope, receive, send)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
