"""The browser terminal: `/s/<session-id>/terminal`, a WebSocket the dashboard's xterm.js panel opens.

The server is the SSH client here: it opens a tunnel stream to the session's `ssh` service, logs in as the
session user with the session's password (checking the host key the session reported), and relays a pty.
No secret reaches the browser; the browser sends keystrokes and sizes, and gets the terminal's bytes.

Messages: binary frames are terminal bytes both ways; text frames are JSON, from the browser
``{"type": "resize", "cols": C, "rows": R}``, from the server ``{"type": "error" | "exit", ...}`` before it closes.
Credentials: the browser's login cookie (berth_web), or what the other gateway paths take (bearer token, token
subprotocol, the session-scoped cookie); a foreign Origin is refused like everywhere on the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from berth.errors import BerthError, Conflict, InvalidInput, ServerUnavailable, Unauthorized
from berth.schemas import SshInfo
from berth.server.db.models import User, Worker
from berth.server.services import gateway_access, sessions, web_sessions
from berth.tunnel.mux import Stream, bridge

from .websockets import check_origin, refuse

if TYPE_CHECKING:  # asyncssh is imported at the first terminal, not at every server start (a quarter second)
    import asyncssh

log = logging.getLogger("berth.gateway")
router = APIRouter(tags=["gateway"], include_in_schema=False)

WEB_COOKIE = "berth_web"  # web/browser.COOKIE (not imported: the gateway does not depend on the pages)
TERM_TYPE = "xterm-256color"
SIZE_LIMITS = {"cols": (2, 1000), "rows": (1, 500)}
CHUNK = 64 * 1024
SSH_LOGIN_TIMEOUT_S = 20.0


def terminal_size(values, default: tuple[int | None, int | None] = (80, 24)) -> tuple[int, int]:
    """(cols, rows) from a query string or a resize message; InvalidInput names the field that is wrong."""
    size = []
    for (name, (low, high)), fallback in zip(SIZE_LIMITS.items(), default):
        raw = values.get(name, fallback)
        try:
            number = int(raw)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(raw, bool) or not low <= number <= high:
            raise InvalidInput(f"{name}: a whole number from {low} to {high}", field=name)
        size.append(number)
    return size[0], size[1]


async def _user(db, websocket: WebSocket, session_id: str) -> User:
    """An explicit token wins; else the browser login; else the session-scoped cookie."""
    creds = gateway_access.credentials(websocket.headers, websocket.cookies, websocket.scope.get("subprotocols") or [])
    if creds.bearer:
        return await gateway_access.user_of(db, creds, session_id)
    web = websocket.cookies.get(WEB_COOKIE)
    if web:
        try:
            return await web_sessions.user_of(db, web)
        except Unauthorized:
            if not creds.cookie:
                raise
    return await gateway_access.user_of(db, creds, session_id)


async def _authorize(websocket: WebSocket, session_id: str) -> tuple[User, Worker, SshInfo]:
    check_origin(websocket)
    async with websocket.app.state.sessionmaker() as db:
        user = await _user(db, websocket, session_id)
        row, worker = await gateway_access.reachable_session(db, user, session_id)
        view = await sessions.view(db, row)
        await db.commit()
    if view.ssh is None or not view.ssh.host_key:
        raise Conflict(f"session {session_id} has no SSH server with a known host key: no terminal to open")
    return user, worker, view.ssh


async def _send_json(websocket: WebSocket, message: dict) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(message))


@router.websocket("/s/{session_id}/terminal")
async def terminal(websocket: WebSocket, session_id: str) -> None:
    try:
        size = terminal_size(websocket.query_params)
        user, worker, ssh = await _authorize(websocket, session_id)
    except BerthError as exc:
        await refuse(websocket, exc)
        return
    await websocket.accept(subprotocol=gateway_access.accepted_subprotocol(websocket.scope.get("subprotocols") or []))
    log.info("gateway: %s opens a terminal in session %s", user.username, session_id)
    settings = websocket.app.state.settings
    try:
        stream = await websocket.app.state.tunnels.open(worker, session_id, "ssh", timeout=settings.tunnel_open_timeout_s)
        await _relay(websocket, stream, ssh, size)
    except BerthError as exc:
        log.info("gateway: terminal in session %s ended: %s", session_id, exc.log_message)
        await _send_json(websocket, {"type": "error", "message": exc.message})
    finally:
        with contextlib.suppress(Exception):
            await websocket.close()


async def _login(stream: Stream, ssh: SshInfo) -> tuple[asyncssh.SSHClientConnection, asyncio.Task]:
    """An SSH client connection over the tunnel stream (a socketpair: asyncssh takes a socket), with the host key
    pinned to the one the session reported and nothing of this server's own SSH setup (keys, agent, config)."""
    import asyncssh

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    pipe = asyncio.create_task(bridge(stream, reader, writer))
    try:
        host_key = asyncssh.import_public_key(ssh.host_key)
        conn = await asyncssh.connect(  # a host name, since a unix socket has no peer address to take one from
            "session", 22, sock=theirs, username=ssh.user, password=ssh.password, known_hosts=([host_key], [], []), config=None,
            client_keys=None, agent_path=None, preferred_auth="password,keyboard-interactive",
            login_timeout=SSH_LOGIN_TIMEOUT_S, connect_timeout=SSH_LOGIN_TIMEOUT_S)
    except BaseException as exc:
        theirs.close()
        pipe.cancel()
        await asyncio.gather(pipe, return_exceptions=True)
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            raise Conflict("the session's SSH server showed a host key other than the one it reported: refused",
                           log_message=f"host key mismatch: {exc.reason}") from None
        if isinstance(exc, asyncssh.PermissionDenied):
            raise Conflict("the session's SSH server refused the login", log_message="terminal login refused") from None
        if isinstance(exc, (asyncssh.Error, OSError, TimeoutError, asyncssh.KeyImportError)):
            raise ServerUnavailable("cannot open an SSH connection to the session",
                                    log_message=f"terminal SSH connect failed: {type(exc).__name__}: {exc}") from None
        raise
    return conn, pipe


async def _relay(websocket: WebSocket, stream: Stream, ssh: SshInfo, size: tuple[int, int]) -> None:
    import asyncssh

    conn, pipe = await _login(stream, ssh)
    try:
        process = await conn.create_process(term_type=TERM_TYPE, term_size=size, encoding=None)

        async def from_browser() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes"):
                    process.stdin.write(message["bytes"])
                    await process.stdin.drain()
                elif message.get("text"):
                    await _control(websocket, process, message["text"])

        async def to_browser() -> None:
            while data := await process.stdout.read(CHUNK):
                await websocket.send_bytes(data)
            await process.wait_closed()
            await _send_json(websocket, {"type": "exit", "status": process.exit_status})

        tasks = [asyncio.create_task(from_browser()), asyncio.create_task(to_browser())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:  # a browser that left, or a shell that ended; anything else is an error
                with contextlib.suppress(WebSocketDisconnect, asyncssh.DisconnectError, asyncssh.ConnectionLost):
                    task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            process.close()
    except (asyncssh.Error, OSError) as exc:
        raise ServerUnavailable("the SSH connection to the session broke",
                                log_message=f"terminal SSH connection broke: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()  # ends the login: closing the panel ends the SSH session
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await conn.wait_closed()
        pipe.cancel()
        await asyncio.gather(pipe, return_exceptions=True)
        if not stream.closed:
            await stream.reset("terminal closed")


async def _control(websocket: WebSocket, process: asyncssh.SSHClientProcess, text: str) -> None:
    """A JSON control message from the browser; a bad one is answered with an error naming the problem, and the
    terminal goes on."""
    try:
        message = json.loads(text)
        if not isinstance(message, dict) or message.get("type") != "resize":
            raise InvalidInput("type: the only message the terminal takes is \"resize\"", field="type")
        cols, rows = terminal_size(message, default=(None, None))
    except ValueError:
        await _send_json(websocket, {"type": "error", "message": "a text message must be JSON: {\"type\": \"resize\", ...}"})
        return
    except InvalidInput as exc:
        await _send_json(websocket, {"type": "error", "message": exc.message, "field": exc.field})
        return
    process.change_terminal_size(cols, rows)
