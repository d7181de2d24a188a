"""Gateway routes under /s/<session-id>/: a session's services through its worker's tunnel.

Every request is authenticated here (WebSocket upgrades included) and authorized by the session's project;
targets are service NAMES the agent resolves, never a host or port from the client.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from starlette.requests import HTTPConnection

from berth.errors import BerthError, NotFound
from berth.server.services import gateway_access

from .grants import Grant, GrantCache, WorkerRoute
from .websockets import check_origin, join, refuse

log = logging.getLogger("berth.gateway")
router = APIRouter(tags=["gateway"], include_in_schema=False)

# Services a client may name, and the raw-bytes WebSocket path of each.
RAW_SERVICES = {"vnc": "vnc", "ssh": "ssh"}


async def authorized_worker(conn: HTTPConnection, session_id: str) -> tuple[Grant, WorkerRoute]:
    """Who is behind the request's credentials (HTTP or WebSocket) and the worker of `session_id`, which they may
    read and which is running (raises BerthError: 401, the 404 of a missing session, 409). Grants are remembered
    for a few seconds (grants.py)."""
    creds = gateway_access.credentials(conn.headers, conn.cookies, conn.scope.get("subprotocols") or [])
    cache: GrantCache = conn.app.state.gateway_grants
    key = cache.key(f"{creds.bearer or ''}\0{creds.cookie or ''}", session_id) if creds.present else None
    grant = cache.get(key) if key else None
    if grant is None:
        async with conn.app.state.sessionmaker() as db:
            user = await gateway_access.user_of(db, creds, session_id)
            _row, worker = await gateway_access.reachable_session(db, user, session_id)
            await db.commit()
        grant = Grant(user.username, WorkerRoute.of(worker))
        cache.put(key, grant)
    return grant, grant.worker


async def open_service_stream(websocket: WebSocket, session_id: str, service: str):
    """Authenticate, authorize and open a stream to the session's `service` (raises BerthError)."""
    check_origin(websocket)
    user, worker = await authorized_worker(websocket, session_id)
    settings = websocket.app.state.settings
    log.info("gateway: %s opens %s of session %s", user.username, service, session_id)
    return await websocket.app.state.tunnels.open(worker, session_id, service, timeout=settings.tunnel_open_timeout_s)


@router.websocket("/s/{session_id}/{service}")
async def raw_service(websocket: WebSocket, session_id: str, service: str) -> None:
    """A session's VNC (RFB) or SSH bytes as binary WebSocket messages: noVNC, `berth ssh`'s ProxyCommand, programs."""
    try:
        if service not in RAW_SERVICES:
            raise NotFound(f"no such gateway path: /s/{session_id}/{service}")
        stream = await open_service_stream(websocket, session_id, RAW_SERVICES[service])
    except BerthError as exc:
        await refuse(websocket, exc)
        return
    await websocket.accept(subprotocol=gateway_access.accepted_subprotocol(websocket.scope.get("subprotocols") or []))
    await join(websocket, stream)
