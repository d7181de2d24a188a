"""Gateway streams across server replicas: a request that lands on a replica without the worker's tunnel is
carried to the replica that holds it (its ``BERTH_REPLICA_URL``, recorded in ``workers.tunnel_url``).

The hop is a WebSocket to ``/api/v1/replicas/stream`` signed with the key every replica shares (the secret
box's MAC over the target and a timestamp): only replicas can open streams this way, and the user was
already authenticated and authorized by the replica they reached.
"""

from __future__ import annotations

import contextlib
import time
from urllib.parse import urlencode

import websockets
from fastapi import APIRouter, WebSocket

from berth.errors import Forbidden, ServerUnavailable
from berth.tunnel.mux import StreamReset

from .websockets import join, refuse

router = APIRouter(include_in_schema=False)
HEADER = "x-berth-replica"
_PURPOSE = "replica-stream"
MAX_SKEW_S = 60


def _message(ts: str, worker_id: str, session_id: str, service: str) -> str:
    return f"{ts}|{worker_id}|{session_id}|{service}"


def sign(box, worker_id: str, session_id: str, service: str) -> str:
    ts = str(int(time.time()))
    return f"{ts}.{box.mac(_PURPOSE, _message(ts, worker_id, session_id, service))}"


def verify(box, value: str, worker_id: str, session_id: str, service: str) -> bool:
    ts, _, mac = value.partition(".")
    if not ts.isdigit() or abs(time.time() - int(ts)) > MAX_SKEW_S:
        return False
    from berth.server.services.security import same_secret

    return same_secret(box.mac(_PURPOSE, _message(ts, worker_id, session_id, service)), mac)


class RemoteStream:
    """A stream held by another replica, as a WebSocket to it; the same calls as :class:`berth.tunnel.mux.Stream`."""

    def __init__(self, ws):
        self.ws = ws
        self._eof_out = False
        self._done: str | None = None

    async def read(self) -> bytes:
        if self._done is not None:
            return b""
        try:
            message = await self.ws.recv()
        except websockets.ConnectionClosedOK:
            self._done = "ended"
            return b""
        except websockets.ConnectionClosed as exc:
            self._done = "reset"
            raise StreamReset("the replica holding the tunnel closed the stream") from exc
        return message if isinstance(message, bytes) else message.encode()

    async def write(self, data: bytes) -> None:
        try:
            await self.ws.send(bytes(data))
        except websockets.ConnectionClosed as exc:
            raise StreamReset("the replica holding the tunnel closed the stream") from exc

    async def write_eof(self) -> None:
        # A WebSocket has no half-close: the other replica sees our end when the viewer leaves (reset below).
        self._eof_out = True

    async def reset(self, reason: str = "closed") -> None:
        self._done = self._done or reason
        with contextlib.suppress(Exception):
            await self.ws.close()

    @property
    def closed(self) -> bool:
        return self._done is not None


async def open_remote(box, url: str, worker_id: str, session_id: str, service: str, timeout: float) -> RemoteStream:
    base = url.rstrip("/")
    scheme, rest = base.split("://", 1)
    query = urlencode({"worker": worker_id, "session": session_id, "service": service})
    target = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/replicas/stream?{query}"
    try:
        ws = await websockets.connect(target, additional_headers={HEADER: sign(box, worker_id, session_id, service)},
                                      open_timeout=timeout, max_size=1 << 21, compression=None)
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise ServerUnavailable(f"the server replica holding this worker's tunnel ({base}) cannot be reached",
                                log_message=f"replica hop to {base} failed: {type(exc).__name__}: {exc}") from None
    return RemoteStream(ws)


@router.websocket("/api/v1/replicas/stream")
async def replica_stream(websocket: WebSocket, worker: str, session: str, service: str) -> None:
    """Another replica asks for a stream through a tunnel this replica holds."""
    registry = websocket.app.state.tunnels
    if registry.box is None or not verify(registry.box, websocket.headers.get(HEADER, ""), worker, session, service):
        await refuse(websocket, Forbidden("replica streams are for server replicas"))
        return
    mux = registry.held(worker)
    if mux is None:
        await refuse(websocket, ServerUnavailable("this replica no longer holds that worker's tunnel"))
        return
    try:
        stream = await mux.open({"session": session, "service": service},
                                timeout=websocket.app.state.settings.tunnel_open_timeout_s)
    except StreamReset as exc:
        await refuse(websocket, ServerUnavailable(f"the session's {service} cannot be reached: {exc}"))
        return
    await websocket.accept()
    await join(websocket, stream)
