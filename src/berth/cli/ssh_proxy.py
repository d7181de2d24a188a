"""`berth ssh-proxy ID`: the OpenSSH ProxyCommand behind `berth ssh` and `berth ssh-config`.

It joins stdin/stdout to the gateway's WebSocket `/s/<id>/ssh` (binary frames), which the server carries through
the worker's tunnel to the session's SSH server: the worker's SSH port need not be reachable from here. SSH does
its own encryption and host key check end to end; this only carries bytes, authenticated with the CLI's token.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from urllib.parse import quote, urlsplit, urlunsplit

import typer
import websockets
from websockets.asyncio.client import ClientConnection

from berth.errors import InvalidInput, ServerUnavailable, from_http

from .common import guard, load_credentials, settings

CHUNK = 64 * 1024


def gateway_url(server: str, session_id: str, service: str = "ssh") -> str:
    """ws(s)://<server>/s/<id>/<service>, keeping a path prefix the server is mounted under."""
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise InvalidInput(f"server: not an http(s) URL: {server!r}", field="server")
    path = f"{parts.path.rstrip('/')}/s/{quote(session_id, safe='')}/{service}"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def open_gateway(server: str, token: str, session_id: str, service: str = "ssh") -> ClientConnection:
    """The WebSocket to a session's service; a refusal becomes the server's error (401, 404, 409, 503 ...)."""
    url = gateway_url(server, session_id, service)
    try:
        return await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                        compression=None, max_size=None, open_timeout=settings().timeout_s)
    except websockets.InvalidStatus as exc:
        response = exc.response
        try:
            body = json.loads(response.body or b"null")
        except ValueError:
            body = None
        raise from_http(response.status_code, body) from None
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        # the message names the server, never the token (it travels in a header, not the URL)
        raise ServerUnavailable(f"cannot reach the berth server at {server}: {exc or type(exc).__name__}") from None


def _stdin_pump(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """Blocking reads on a daemon thread (stdin may be a pipe, a socket or a terminal); each chunk waits for a
    place in the small queue, so a slow WebSocket slows the reader down instead of filling memory."""
    while True:
        try:
            data = os.read(0, CHUNK)
        except OSError:
            data = b""
        asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        if not data:
            return


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


async def proxy(server: str, token: str, session_id: str) -> None:
    """stdin → WebSocket and WebSocket → stdout until either side ends. A clean end returns; a broken one raises."""
    ws = await open_gateway(server, token, session_id)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    threading.Thread(target=_stdin_pump, args=(loop, queue), daemon=True, name="stdin").start()

    async def upstream() -> None:
        while data := await queue.get():
            await ws.send(data)

    async def downstream() -> None:
        async for message in ws:
            await asyncio.to_thread(_write_all, message if isinstance(message, bytes) else message.encode())

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    except websockets.ConnectionClosedError as exc:
        reason = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else "the connection broke"
        raise ServerUnavailable(f"the connection to session {session_id} ended: {reason}") from None
    except BrokenPipeError:
        pass  # ssh went away first: nothing left to deliver
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()


def ssh_proxy(session_id: str = typer.Argument(..., help="Session ID")) -> None:
    """ProxyCommand for OpenSSH: carry a session's SSH connection through the berth server (used by `berth ssh`
    and the `berth ssh-config` entries; not meant to be run by hand)."""

    async def _go() -> None:
        server, token = load_credentials()
        await proxy(server, token, session_id)

    guard(lambda: asyncio.run(_go()))
