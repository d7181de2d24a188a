"""The gateway's proxy to a session's own web app: one HTTP/1.1 exchange (h11) or one WebSocket (websockets'
sans-I/O client) per tunnel stream to the session's ``http`` service.

What the app sees is built here, not copied from the client: ``Host`` is the app's loopback address, the
``X-Forwarded-Proto/-Host/-Prefix`` headers are ours (from the request as this server saw it), and the
gateway's credentials (``Authorization``, the ``berth_gw`` and ``berth_web`` cookies), client-sent
``X-Forwarded-*``/``Forwarded``, hop-by-hop headers and any header with ``_`` in its name (servers that map
``X_Forwarded_For`` onto ``X-Forwarded-For`` would trust it) never reach it. The app's answer comes back as
it is (a redirect is passed on, never followed); its cookies are kept to the session's app path. Bodies
stream both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import h11
from fastapi import Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from berth.errors import BadGateway
from berth.server.api.deps import public_base
from berth.server.services.gateway_access import COOKIE as GATEWAY_COOKIE, TOKEN_SUBPROTOCOL
from berth.server.web.browser import COOKIE as WEB_COOKIE
from berth.tunnel.mux import StreamReset

from .websockets import end_join

UPSTREAM_HOST = "127.0.0.1"  # the app listens on the worker's loopback; its port is the agent's business
WS_MAX_MESSAGE = 16 * 2**20
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
               "trailer", "trailers", "transfer-encoding", "upgrade"}
_OURS = {"host", "authorization", "forwarded", "content-length", "expect",
         # who the client is and which URL it asked for are ours to say, not the client's
         "x-real-ip", "x-original-url", "x-rewrite-url", "x-original-uri", "x-client-ip", "true-client-ip"}
_COOKIES_STRIPPED = {GATEWAY_COOKIE, WEB_COOKIE}
_NOT_FROM_APPS = {"clear-site-data"}  # one session's app must not log the browser out of berth
# A session's app is served on berth's own origin: unless sandboxed, its scripts could read berth's pages (their
# CSRF tokens) with a visitor's cookie and act as them. The sandbox gives its pages an opaque origin.
APP_SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox allow-downloads allow-modals"


# --- headers -------------------------------------------------------------------------------------

def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Headers the sender named in ``Connection``: hop-by-hop too (RFC 9110 §7.6.1)."""
    return {t.strip().lower() for name, value in headers if name.lower() == "connection" for t in value.split(",")}


def _strip_cookies(value: str) -> str | None:
    """The Cookie header without the gateway's and the pages' cookies (the app's own are kept as sent)."""
    kept = [part.strip() for part in value.split(";")
            if part.strip() and part.split("=", 1)[0].strip() not in _COOKIES_STRIPPED]
    return "; ".join(kept) or None


def request_headers(client: Iterable[tuple[str, str]], *, prefix: str, proto: str, host: str) -> list[tuple[str, str]]:
    """The headers the app gets for a client's request through `prefix` (``/s/<id>/app``)."""
    client = list(client)
    hop = _HOP_BY_HOP | _connection_tokens(client)
    out = [("Host", UPSTREAM_HOST)]
    for name, value in client:
        low = name.lower()
        if low in hop or low in _OURS or "_" in low or low.startswith(("x-forwarded-", "sec-websocket-")):
            continue
        if low == "cookie":
            value = _strip_cookies(value)
            if value is None:
                continue
        out.append((name, value))
    out += [("X-Forwarded-Proto", proto), ("X-Forwarded-Host", host), ("X-Forwarded-Prefix", prefix)]
    return out


def _set_cookie(value: str, prefix: str) -> str | None:
    """An app's cookie kept to the app's path: no Domain, the Path under `prefix` (none, or another: moved under
    it); its value untouched. None for a cookie named like ours (it would shadow them)."""
    first, *attributes = value.split(";")
    if first.split("=", 1)[0].strip() in _COOKIES_STRIPPED:
        return None
    kept, path = [], ""
    for attribute in attributes:
        key, _, arg = attribute.partition("=")
        if key.strip().lower() == "path":
            path = arg.strip()
        elif key.strip().lower() != "domain" and attribute.strip():
            kept.append(attribute.strip())
    if path != prefix and not path.startswith(prefix + "/"):
        path = prefix + (path if path.startswith("/") else "/")
    return "; ".join([first.strip(), *kept, f"Path={path}"])


def response_headers(upstream: Iterable[tuple[bytes, bytes]], prefix: str, sandbox: bool = True) -> list[tuple[bytes, bytes]]:
    """The app's response headers as the client gets them (raw ASGI pairs); with `sandbox`, our sandbox policy is
    added to whatever policy the app sets (browsers enforce every policy they get)."""
    pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in upstream]
    hop = _HOP_BY_HOP | _connection_tokens(pairs) | _NOT_FROM_APPS
    out = []
    for name, value in pairs:
        low = name.lower()
        if low in hop:
            continue
        if low == "set-cookie" and (value := _set_cookie(value, prefix)) is None:
            continue
        out.append((low.encode("latin-1"), value.encode("latin-1")))
    if sandbox:
        out.append((b"content-security-policy", APP_SANDBOX.encode()))
    return out


def forwarded_as(request: Request | WebSocket) -> tuple[str, str]:
    """Scheme and host of this server as the client reached it: BERTH_PUBLIC_URL, else the request's own (its
    scheme through BERTH_TRUSTED_PROXIES only); never a client's X-Forwarded-* header."""
    parts = urlsplit(public_base(request))
    return ("https" if parts.scheme in ("https", "wss") else "http"), parts.netloc


# --- HTTP ------------------------------------------------------------------------------------------

class _Upstream:
    """One HTTP/1.1 exchange with the app over a stream (h11 keeps the framing honest both ways)."""

    def __init__(self, stream):
        self.stream = stream
        self.conn = h11.Connection(our_role=h11.CLIENT)

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.write(data)

    async def next_event(self):
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadGateway(f"the session's web app answered with broken HTTP ({exc})") from None
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.read())  # b"": the app closed the connection

    async def close(self) -> None:
        if not self.stream.closed:
            await self.stream.reset("exchange over")


async def proxy_http(request: Request, stream, prefix: str, target: str) -> StreamingResponse:
    """Send the request to the app and answer with its response; the stream is closed when the answer ends."""
    upstream = _Upstream(stream)
    proto, host = forwarded_as(request)
    headers = request_headers(request.headers.items(), prefix=prefix, proto=proto, host=host)
    has_body = "transfer-encoding" in request.headers or "content-length" in request.headers
    if "content-length" in request.headers and "transfer-encoding" not in request.headers:
        headers.append(("Content-Length", request.headers["content-length"]))
    elif has_body:
        headers.append(("Transfer-Encoding", "chunked"))
    headers.append(("Connection", "close"))  # one exchange per stream

    async def send_body() -> None:
        if has_body:
            async for chunk in request.stream():
                if chunk:
                    await upstream.send(h11.Data(data=chunk))
        await upstream.send(h11.EndOfMessage())

    tasks: list[asyncio.Task] = []
    try:
        await upstream.send(h11.Request(method=request.method, target=target, headers=headers))
        tasks = [body := asyncio.create_task(send_body()), head := asyncio.create_task(_response_head(upstream))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if body.done() and body.exception() is not None:
            raise body.exception()
        response = await head  # the app may answer before reading the whole body: the rest is not sent then
    except (StreamReset, ClientDisconnect, h11.LocalProtocolError) as exc:
        await upstream.close()
        raise BadGateway(f"the exchange with the session's web app broke off ({exc})") from None
    except BaseException:
        await upstream.close()
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    answer = StreamingResponse(_response_body(upstream), status_code=response.status_code)
    answer.raw_headers = response_headers(response.headers, prefix, request.app.state.settings.gateway_app_sandbox)
    return answer


async def _response_head(upstream: _Upstream) -> h11.Response:
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise BadGateway("the session's web app closed the connection without answering")
        # an InformationalResponse (100 Continue): the final answer follows


async def _response_body(upstream: _Upstream) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
    finally:
        await upstream.close()


# --- WebSocket -------------------------------------------------------------------------------------

async def open_websocket(websocket: WebSocket, stream, prefix: str, target: str) -> tuple[ClientProtocol, list]:
    """The WebSocket handshake with the app (the client's subprotocols, without the token one): the protocol ready
    for messages, the frames that came with the answer, and the subprotocol the app chose; BadGateway with the
    app's status when it refuses."""
    proto, host = forwarded_as(websocket)
    offered = [p for p in websocket.scope.get("subprotocols") or [] if not p.startswith(TOKEN_SUBPROTOCOL)]
    # A browser's Origin was checked to be ours; the app gets its own, so that apps checking Origin against Host
    # (Jupyter, Tornado) accept it.
    origin = f"http://{UPSTREAM_HOST}" if "origin" in websocket.headers else None
    protocol = ClientProtocol(parse_uri(f"ws://{UPSTREAM_HOST}{target}"), origin=origin,
                              subprotocols=offered or None, max_size=WS_MAX_MESSAGE)
    request = protocol.connect()
    extra = [(n, v) for n, v in request_headers(websocket.headers.items(), prefix=prefix, proto=proto, host=host)
             if n.lower() not in ("host", "origin") and n not in request.headers]
    request.headers.update(Headers(extra))
    protocol.send_request(request)
    await _flush(protocol, stream)
    while not (events := protocol.events_received()):
        data = await stream.read()
        if not data:
            raise BadGateway("the session's web app closed the connection during the WebSocket handshake")
        protocol.receive_data(data)
    failure = protocol.handshake_exc
    if failure is not None:
        status = f"HTTP {failure.response.status_code}" if isinstance(failure, InvalidStatus) else str(failure)
        raise BadGateway(f"the session's web app refused the WebSocket ({status})")
    return protocol, events[1:], events[0].headers.get("Sec-WebSocket-Protocol")


async def _flush(protocol: ClientProtocol, stream) -> None:
    for data in protocol.data_to_send():
        if data:
            await stream.write(data)
        else:  # the protocol is done sending: half-close
            await stream.write_eof()


async def join_websocket(websocket: WebSocket, stream, protocol: ClientProtocol, early: list[Frame]) -> None:
    """Messages both ways until either side closes; a close code is passed on. `early`: frames that came with the
    app's handshake answer."""

    async def client_to_app() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code") or 1000
                protocol.send_close(code if 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015) else 1000)
                await _flush(protocol, stream)
                return
            if message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            elif message.get("text") is not None:
                protocol.send_text(message["text"].encode())
            await _flush(protocol, stream)

    async def app_to_client() -> None:
        parts: list[bytes] = []
        kind: Opcode | None = None
        for frame in early:
            kind, parts = await _deliver(websocket, frame, kind, parts)
        while True:
            data = await stream.read()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for frame in protocol.events_received():
                kind, parts = await _deliver(websocket, frame, kind, parts)
            await _flush(protocol, stream)  # pongs, the close reply
            closed = protocol.close_rcvd
            if closed is not None:
                await websocket.close(code=closed.code if closed.code not in (1005, 1006) else 1000, reason=closed.reason)
                return
            if not data:  # the app dropped the connection without a close frame
                await websocket.close(code=1011)
                return

    tasks = [asyncio.create_task(client_to_app()), asyncio.create_task(app_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (WebSocketDisconnect, StreamReset):
        pass
    finally:
        await end_join(websocket, stream, tasks, "WebSocket ended")


async def _deliver(websocket: WebSocket, frame: Frame, kind: Opcode | None, parts: list[bytes]):
    """One frame from the app: data frames are joined into messages; control frames are the protocol's."""
    if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
        kind, parts = frame.opcode, [frame.data]
    elif frame.opcode is Opcode.CONT and kind is not None:
        parts.append(frame.data)
    else:
        return kind, parts
    if frame.fin:
        message = b"".join(parts)
        if kind is Opcode.TEXT:
            await websocket.send_text(message.decode())
        else:
            await websocket.send_bytes(message)
        kind, parts = None, []
    return kind, parts
