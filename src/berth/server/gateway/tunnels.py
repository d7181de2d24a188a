"""The server's end of agent tunnels: the WebSocket agents open, and the registry the gateway opens streams from.

A tunnel is a live connection, so it lives in the process that accepted it; which process that is goes into the
database (``workers.tunnel_replica``), so another replica can tell where a worker's tunnel is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from fastapi import APIRouter, WebSocket
from sqlalchemy import update
from starlette.websockets import WebSocketDisconnect

from berth.errors import BerthError, ServerUnavailable
from berth.server.db.models import Worker, utcnow
from berth.server.services import access
from berth.server.services.accounts import authenticate
from berth.tunnel.mux import Mux, Stream, StreamReset

from .grants import WorkerRoute
from .replicas import RemoteStream, open_remote

log = logging.getLogger("berth.gateway")
router = APIRouter(tags=["agents"])


def default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TunnelRegistry:
    """The tunnels this process holds, by worker id."""

    def __init__(self, replica: str, url: str | None = None):
        self.replica = replica
        self.url = url            # where other replicas reach this one (BERTH_REPLICA_URL)
        self.box = None           # the secret box, set at startup: signs hops between replicas
        self._muxes: dict[str, Mux] = {}
        self.changed = asyncio.Event()  # set whenever a tunnel comes or goes (tests wait on it)

    def held(self, worker_id: str) -> Mux | None:
        mux = self._muxes.get(worker_id)
        return mux if mux is not None and mux.closed is None else None

    def _add(self, worker_id: str, mux: Mux) -> None:
        old = self._muxes.get(worker_id)
        if old is not None and old is not mux:  # the agent reconnected before we saw the old one drop
            old.close("replaced by a newer tunnel from the same worker")
        self._muxes[worker_id] = mux
        self.changed.set()

    def _remove(self, worker_id: str, mux: Mux) -> bool:
        if self._muxes.get(worker_id) is mux:
            del self._muxes[worker_id]
            self.changed.set()
            return True
        return False

    async def open(self, worker: Worker | WorkerRoute, session_id: str, service: str, timeout: float,
                   wait: bool = True) -> Stream | RemoteStream:
        """A stream to `service` of `session_id` on `worker`; the agent maps the name to an address it knows.
        When another replica holds the tunnel, the stream goes through that replica."""
        mux = self.held(worker.id)
        if mux is None:
            if worker.tunnel_replica and worker.tunnel_replica != self.replica:
                if worker.tunnel_url and self.box is not None:
                    return await open_remote(self.box, worker.tunnel_url, worker.id, session_id, service, timeout)
                raise ServerUnavailable(f"this session's worker is connected to another server replica "
                                        f"({worker.tunnel_replica}) that has no BERTH_REPLICA_URL; open the link "
                                        f"through that replica")
            raise ServerUnavailable("this session's worker is not connected (its tunnel is down); try again shortly")
        try:
            return await mux.open({"session": session_id, "service": service}, timeout=timeout, wait=wait)
        except StreamReset as exc:
            raise ServerUnavailable(f"the session's {service} cannot be reached: {exc}") from None

    def close_all(self, reason: str = "server shutting down") -> None:
        for mux in list(self._muxes.values()):
            mux.close(reason)


async def _record(websocket: WebSocket, worker_id: str, replica: str | None, only_if: str | None = None) -> None:
    async with websocket.app.state.sessionmaker() as db:
        query = update(Worker).where(Worker.id == worker_id)
        if only_if is not None:
            query = query.where(Worker.tunnel_replica == only_if)
        url = websocket.app.state.tunnels.url if replica else None
        await db.execute(query.values(tunnel_replica=replica, tunnel_since=utcnow() if replica else None, tunnel_url=url))
        await db.commit()


@router.websocket("/api/v1/workers/{worker_id}/tunnel")
async def tunnel(websocket: WebSocket, worker_id: str) -> None:
    """The agent's tunnel (binary frames of :mod:`berth.tunnel.mux`); authenticated by the worker's token."""
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    try:
        async with websocket.app.state.sessionmaker() as db:
            access.require_worker(await authenticate(db, token), worker_id)
    except BerthError as exc:
        log.info("tunnel for worker %s refused: %s", worker_id, exc.log_message)
        await websocket.close(code=1008)
        return
    registry: TunnelRegistry = websocket.app.state.tunnels
    await websocket.accept()
    mux = Mux(websocket.send_bytes, odd_ids=True, name=f"tunnel of worker {worker_id}")
    registry._add(worker_id, mux)
    try:
        await _record(websocket, worker_id, registry.replica)
        log.info("tunnel up: worker %s", worker_id)
        while mux.closed is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data:
                await mux.handle(data)
    except (WebSocketDisconnect, RuntimeError, StreamReset):
        pass
    finally:
        mux.close("the worker's tunnel closed")
        if registry._remove(worker_id, mux):
            with contextlib.suppress(Exception):
                await _record(websocket, worker_id, None, only_if=registry.replica)
            log.info("tunnel down: worker %s", worker_id)
        with contextlib.suppress(Exception):
            await websocket.close()
