"""A session's own web app through the gateway: ``/s/<id>/app/<path>?<query>``, HTTP (any method) and WebSocket,
to whatever the session serves on its ``$BERTH_APP_PORT`` (the agent's ``http`` service).

The credentials are those of every gateway path (bearer token, the token subprotocol, the session's cookie;
the Origin rule on WebSocket upgrades); without them the answer is 401, never a login redirect. The path and
query are passed on as the client sent them (still encoded): they only ever address the app of the session
that was authorized.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import RedirectResponse, Response
from starlette.requests import HTTPConnection

from berth.errors import BadGateway, BerthError, NotFound, ServerUnavailable

from berth.tunnel.mux import StreamReset

from .proxy import join_websocket, open_websocket, proxy_http
from .routes import authorized_worker
from .websockets import check_origin, refuse

log = logging.getLogger("berth.gateway")
router = APIRouter(tags=["gateway"], include_in_schema=False)

SERVICE = "http"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
APP_DOWN = ("nothing listens on the session's app port: start your web server in the session on "
            "127.0.0.1 port $BERTH_APP_PORT")


def prefix_and_target(conn: HTTPConnection, session_id: str) -> tuple[str, str]:
    """``/s/<id>/app`` and the request's path below it with its query, as sent (raw, still encoded)."""
    raw = conn.scope.get("raw_path") or conn.scope["path"].encode()
    parts = raw.split(b"/", 4)  # b"", b"s", id, b"app", the rest
    if len(parts) < 5 or parts[1] != b"s" or parts[3] != b"app" or unquote(parts[2].decode("latin-1")) != session_id:
        raise NotFound(f"no such gateway path: {conn.scope['path']}")
    target = "/" + parts[4].decode("latin-1")
    if conn.scope.get("query_string"):
        target += "?" + conn.scope["query_string"].decode("latin-1")
    return f"/s/{session_id}/app", target


async def _open(conn: HTTPConnection, session_id: str, wait: bool = True):
    """Authenticate, authorize, then a stream to the session's web app with the prefix and target to send."""
    user, worker = await authorized_worker(conn, session_id)
    prefix, target = prefix_and_target(conn, session_id)
    tunnels = conn.app.state.tunnels
    try:
        stream = await tunnels.open(worker, session_id, SERVICE, timeout=conn.app.state.settings.tunnel_open_timeout_s,
                                    wait=wait)
    except ServerUnavailable as exc:
        if tunnels.held(worker.id) is None:  # the tunnel itself is down (or elsewhere): that message stands
            raise
        raise BadGateway(APP_DOWN, log_message=f"session {session_id}: {exc.message}") from None
    log.debug("gateway: %s reaches the web app of session %s", user.username, session_id)
    return stream, prefix, target


@router.api_route("/s/{session_id}/app", methods=METHODS)
async def app_without_slash(session_id: str) -> Response:
    return RedirectResponse(f"/s/{quote(session_id, safe='')}/app/", status_code=308)


@router.api_route("/s/{session_id}/app/{path:path}", methods=METHODS)
async def app_http(request: Request, session_id: str, path: str) -> Response:
    # The request goes out with the stream's opening (no wait for the agent's answer): a refusal shows up as the
    # stream's reset before any byte came back, and is answered as for an app that does not listen.
    stream, prefix, target = await _open(request, session_id, wait=False)
    try:
        return await proxy_http(request, stream, prefix, target)
    except BadGateway as exc:
        if getattr(stream, "bytes_in", 1) == 0:
            raise BadGateway(APP_DOWN, log_message=f"session {session_id}: {exc.message}") from None
        raise


@router.websocket("/s/{session_id}/app/{path:path}")
async def app_websocket(websocket: WebSocket, session_id: str, path: str) -> None:
    stream = None
    try:
        check_origin(websocket)
        stream, prefix, target = await _open(websocket, session_id)
        try:
            protocol, early, subprotocol = await open_websocket(websocket, stream, prefix, target)
        except StreamReset as exc:
            raise BadGateway(f"the session's web app went away during the WebSocket handshake ({exc})") from None
    except BerthError as exc:
        if stream is not None and not stream.closed:
            await stream.reset("refused")
        await refuse(websocket, exc)
        return
    await websocket.accept(subprotocol=subprotocol)
    await join_websocket(websocket, stream, protocol, early)
