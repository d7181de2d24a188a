"""The agent's end of the tunnel: one outbound WebSocket to the server (its own port), kept up with backoff.

The server opens streams naming a session and one of its services; the agent looks the address up in the
session's services file (written by its supervisor) and joins the stream to it. Workers need no inbound route,
and sessions do not notice the tunnel dropping: supervisors are separate processes, only open streams end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import websockets

from berth.agent.desktop.rfb_input import RfbInputMeter
from berth.agent.listeners import listener_uids
from berth.agent.session_services import Service, read_services, touch_input
from berth.ids import is_id
from berth.tunnel.mux import Mux, Stream, bridge

log = logging.getLogger("berth.agent.tunnel")
MAX_MESSAGE = 1 << 20  # larger than a DATA frame; a bigger message is a protocol error


def tunnel_url(server: str, worker_id: str) -> str:
    base = server.rstrip("/")
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/workers/{worker_id}/tunnel"


class InputStamp:
    """Touches a session's input stamp at most once a second while its viewers send input."""

    def __init__(self, session_dir: Path, protocol: str):
        self.session_dir = session_dir
        self.meter = RfbInputMeter() if protocol == "rfb" else None  # a VNC viewer's update requests are not input
        self.last = 0.0

    def __call__(self, data: bytes) -> None:
        if self.meter is not None and not self.meter.feed(data):
            return
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            with contextlib.suppress(OSError):
                touch_input(self.session_dir)


class AgentTunnel:
    def __init__(self, server: str, worker_id: str, token: Callable[[], str], sessions_dir: Path,
                 backoff_max_s: float = 15.0):
        self.url = tunnel_url(server, worker_id)
        self.token = token
        self.sessions_dir = sessions_dir
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self.connections = 0  # how many times the tunnel came up (tests and logs)

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = 0.25
        while not stopping.is_set():
            began = time.monotonic()
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("tunnel: %s (retrying in %.1f s)", _describe(exc), backoff)
            if time.monotonic() - began > 10:  # it was up a while: start the backoff over
                backoff = 0.25
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff * (0.8 + 0.4 * random.random())):
                    await stopping.wait()
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _connect_once(self) -> None:
        async with websockets.connect(self.url, additional_headers={"Authorization": f"Bearer {self.token()}"},
                                      max_size=MAX_MESSAGE, compression=None, open_timeout=10,
                                      ping_interval=15, ping_timeout=20, write_limit=2**20) as ws:
            mux = Mux(ws.send, odd_ids=False, accept=self._accept, name="server")
            self.connections += 1
            self.connected.set()
            log.info("tunnel up (%s)", self.url.split("/api/", 1)[0])
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        await mux.handle(message)
            finally:
                self.connected.clear()
                mux.close("the tunnel closed")
                log.info("tunnel down")

    async def _accept(self, stream: Stream) -> None:
        session_id, name = stream.target.get("session"), stream.target.get("service")
        if not isinstance(session_id, str) or not is_id(session_id) or not isinstance(name, str):
            await stream.reset("bad target")
            return
        session_dir = self.sessions_dir / session_id
        service = read_services(session_dir).get(name)
        if service is None:
            await stream.reset(f"session {session_id} has no {name!r} service here (not running, or not this app)")
            return
        if service.uid is not None and service.port is not None:
            owners = listener_uids(service.port)
            if owners and service.uid not in owners:  # another user's program took the session's port first
                await stream.reset(f"port {service.port} is held by another user's program, not the session's")
                return
        try:
            reader, writer = await _connect(service)
        except OSError as exc:
            await stream.reset(f"{name} refused the connection ({exc.strerror or type(exc).__name__})")
            return
        await stream.mux.accepted(stream)
        await bridge(stream, reader, writer, on_client_bytes=InputStamp(session_dir, service.protocol))


async def _connect(service: Service) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if service.path is not None:
        return await asyncio.open_unix_connection(service.path, limit=2**20)
    return await asyncio.open_connection(service.host, service.port, limit=2**20)


def _describe(exc: Exception) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        return f"the server refused the tunnel (HTTP {exc.response.status_code})"
    if isinstance(exc, (OSError, websockets.ConnectionClosed, TimeoutError)):
        return f"cannot reach the server ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"
