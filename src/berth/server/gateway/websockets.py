"""WebSocket plumbing of the gateway: answering a refused upgrade with a real HTTP status, the Origin rule, and
joining an accepted WebSocket to a tunnel stream."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from fastapi import WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from berth.errors import BerthError, Forbidden
from berth.tunnel.mux import Stream, StreamReset


async def refuse(websocket: WebSocket, exc: BerthError) -> None:
    """Refuse an upgrade with the error's HTTP status (401, 404, ...) and body, as for a plain request."""
    try:
        await websocket.send_denial_response(JSONResponse(exc.to_body(), status_code=exc.http_status, headers=exc.headers()))
    except RuntimeError:  # a server without the denial-response extension: close before accepting (403)
        await websocket.close(code=1008)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(websocket: WebSocket) -> None:
    """A browser's upgrade must come from one of our pages (or a configured origin): else any site a logged-in
    user visits could open their desktop with the user's cookie. Programs send no Origin and are not affected."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return
    settings = websocket.app.state.settings
    host = websocket.headers.get("host", "")
    allowed = {f"http://{host}".lower(), f"https://{host}".lower(), *(o.rstrip("/").lower() for o in settings.gateway_origins)}
    if settings.public_url:
        allowed.add(_origin_of(settings.public_url))
    if origin.rstrip("/").lower() not in allowed:
        raise Forbidden("this WebSocket was opened from another site: refused", log_message=f"foreign Origin {origin!r} refused")


async def join(websocket: WebSocket, stream: Stream) -> None:
    """Binary messages ⇄ stream bytes, until either side ends."""

    async def to_stream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None and message.get("text") is not None:
                data = message["text"].encode()
            if data:
                await stream.write(data)
        await stream.write_eof()

    async def to_socket() -> None:
        while data := await stream.read():
            await websocket.send_bytes(data)
        await websocket.close()

    tasks = [asyncio.create_task(to_stream()), asyncio.create_task(to_socket())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        # the browser leaving ends the stream; the session's end closes the WebSocket
        if tasks[1].done() or any(t.exception() for t in done if not t.cancelled()):
            for task in tasks:
                task.cancel()
        else:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await tasks[1]
    except (WebSocketDisconnect, StreamReset):
        pass
    finally:
        await end_join(websocket, stream, tasks, "viewer left")


async def end_join(websocket: WebSocket, stream, tasks: list[asyncio.Task], reason: str) -> None:
    """After a WebSocket ⇄ stream join: both pumps stopped, the stream reset (if still open), the socket closed."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if not stream.closed:
        await stream.reset(reason)
    with contextlib.suppress(Exception):
        await websocket.close()
