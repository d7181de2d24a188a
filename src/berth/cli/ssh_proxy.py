"""`berth ssh-proxy ID`: the OpenSSH ProxyCommand behind `berth ssh` and `berth ssh-config`.

It joins stdin/stdout to the gateway's WebSocket `/s/<id>/ssh` (binary frames), which the server carries through
the worker's tunnel to the session's SSH server: the worker's SSH port need not be reachable from here. SSH does
its own encryption and host key check end to end; this only carries bytes, authenticated with the CLI's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import typer
import websockets
from websockets.asyncio.client import ClientConnection

from berth.errors import InvalidInput, ServerUnavailable, from_http

from .common import guard, load_credentials, run_loop, settings

CHUNK = 256 * 1024
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported by Python 3.11
PIPE_SIZE = 1 << 20


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
    """Blocking reads on a daemon thread, for a stdin the event loop cannot watch (a regular file, /dev/null);
    each chunk waits for a place in the small queue, so a slow WebSocket slows the reader down."""
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


def _bigger_pipe(fd: int) -> None:
    """ssh talks to its ProxyCommand through pipes of 64 KiB: larger ones let each WebSocket message carry more
    (fewer, bigger messages through three processes is what makes the tunnel fast)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


async def _stdio() -> tuple[Callable[[], Awaitable[bytes]], Callable[[bytes], Awaitable[None]]]:
    """Read and write functions for stdin/stdout: on the event loop when they are pipes or sockets (what ssh gives
    a ProxyCommand), else through a thread."""
    loop = asyncio.get_running_loop()
    for fd in (0, 1):
        _bigger_pipe(fd)
    try:
        reader = asyncio.StreamReader(limit=CHUNK)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(0, "rb", buffering=0, closefd=False))
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                            os.fdopen(1, "wb", buffering=0, closefd=False))
    except (OSError, ValueError):
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        threading.Thread(target=_stdin_pump, args=(loop, queue), daemon=True, name="stdin").start()

        async def write_threaded(data: bytes) -> None:
            await asyncio.to_thread(_write_all, data)
        return queue.get, write_threaded
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()
    return (lambda: reader.read(CHUNK)), write


async def proxy(server: str, token: str, session_id: str) -> None:
    """stdin → WebSocket and WebSocket → stdout until either side ends. A clean end returns; a broken one raises."""
    ws = await open_gateway(server, token, session_id)
    read, write = await _stdio()

    async def upstream() -> None:
        while data := await read():
            await ws.send(data)

    async def downstream() -> None:
        async for message in ws:
            await write(message if isinstance(message, bytes) else message.encode())

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    except websockets.ConnectionClosedError as exc:
        reason = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else "the connection broke"
        raise ServerUnavailable(f"the connection to session {session_id} ended: {reason}") from None
    except (BrokenPipeError, ConnectionResetError):
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

    guard(lambda: run_loop(_go()))
