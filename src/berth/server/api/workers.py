"""Agents (register, heartbeat, claim), the workers list, and supervisors (status, console, stop watch)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from berth.schemas import Assignment, EventIn, SupervisorControl, SupervisorStatus, WorkerRegister, WorkerRegistered, WorkerView
from berth.server.services import access
from berth.server.services import sessions as session_svc
from berth.server.services import workers as svc

from .deps import Caller, CurrentUser, Db, errors, long_poll

router = APIRouter(prefix="/api/v1", tags=["workers"])


@router.post("/workers/register", response_model=WorkerRegistered, responses=errors(401, 403, 422))
async def register(body: WorkerRegister, db: Db, principal: Caller) -> WorkerRegistered:
    access.may_register_worker(principal, body.worker_id)
    worker, token = await svc.register(db, body)
    return WorkerRegistered(worker_id=worker.id, token=token)


class HeartbeatReply(BaseModel):
    sessions: list[str]


@router.post("/workers/{worker_id}/heartbeat", response_model=HeartbeatReply, responses=errors(401, 403))
async def heartbeat(worker_id: str, db: Db, principal: Caller) -> HeartbeatReply:
    return HeartbeatReply(sessions=await svc.heartbeat(db, access.require_worker(principal, worker_id)))


class AbandonRequest(BaseModel):
    sessions: list[Annotated[str, Field(pattern=r"^[0-9a-f]{1,32}$")]] = Field(
        max_length=1000, description="Sessions claimed for this worker that it never received (ids)")


class AbandonReply(BaseModel):
    failed: list[str]


@router.post("/workers/{worker_id}/abandon", response_model=AbandonReply, responses=errors(401, 403))
async def abandon(worker_id: str, body: AbandonRequest, db: Db, principal: Caller) -> AbandonReply:
    """The agent restarted between the server's claim and its answer: those sessions fail with that reason
    (only sessions of this worker still starting; one whose supervisor reported meanwhile keeps its state)."""
    return AbandonReply(failed=await svc.abandon(db, access.require_worker(principal, worker_id), body.sessions))


@router.post("/workers/{worker_id}/claim", response_model=Assignment, responses={**errors(401, 403), 204: {"description": "Nothing to do"}})
async def claim(worker_id: str, db: Db, principal: Caller, request: Request, wait: float = Query(0, ge=0, le=60)):
    """Take the oldest queued session of this worker's queues; with `wait`, held open until there is one."""
    assignment = await svc.claim(db, access.require_worker(principal, worker_id), long_poll(request, wait))
    return Response(status_code=204) if assignment is None else assignment


@router.get("/workers", response_model=list[WorkerView], responses=errors(401))
async def list_workers(db: Db, _user: CurrentUser) -> list[WorkerView]:
    return await svc.list_workers(db)


# --- supervisor routes: authenticated by the session's own token --------------------------------

@router.post("/sessions/{session_id}/supervisor/status", response_model=SupervisorControl, responses=errors(401, 403, 409))
async def report_status(session_id: str, body: SupervisorStatus, db: Db, principal: Caller) -> SupervisorControl:
    access.require_supervisor(principal, session_id)
    return await session_svc.supervisor_report(db, session_id, body)


@router.post("/sessions/{session_id}/supervisor/events", status_code=204, responses=errors(401, 403))
async def post_events(session_id: str, body: list[EventIn], db: Db, principal: Caller) -> None:
    access.require_supervisor(principal, session_id)
    await session_svc.add_events(db, session_id, body)


@router.post("/sessions/{session_id}/supervisor/watch", response_model=SupervisorControl, responses=errors(401, 403))
async def watch(session_id: str, db: Db, principal: Caller, request: Request, wait: float = Query(0, ge=0, le=60),
                known_extend: datetime | None = None, known_sync: datetime | None = None) -> SupervisorControl:
    """Held open until there is news for the supervisor (stop, idle extension or sync request differing from what
    it already knows), or `wait` passes: how supervisors learn of user requests."""
    access.require_supervisor(principal, session_id)
    return await session_svc.watch(db, session_id, known_extend, known_sync, long_poll(request, wait))
