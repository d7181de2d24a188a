"""Agents (register, heartbeat, claim) and supervisors (status, console, stop watch)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import select

from berth.errors import Forbidden
from berth.schemas import Assignment, EventIn, SessionStatus, SupervisorControl, SupervisorStatus, WorkerRegister, WorkerRegistered, WorkerView
from berth.server.db.models import Worker
from berth.server.services import sessions as session_svc
from berth.server.services import workers as svc
from berth.server.services.accounts import Principal

from .deps import Caller, CurrentUser, Db, errors

router = APIRouter(prefix="/api/v1", tags=["workers"])


def _require_worker(principal: Principal, worker_id: str):
    if principal.kind != "worker" or principal.worker.id != worker_id:
        raise Forbidden("this route is for the worker itself")
    return principal.worker


@router.post("/workers/register", response_model=WorkerRegistered, responses=errors(401, 403, 422))
async def register(body: WorkerRegister, db: Db, principal: Caller) -> WorkerRegistered:
    allowed = principal.kind in ("agent-registration", "worker") or (principal.user is not None and principal.user.is_admin)
    if principal.kind == "worker" and body.worker_id != principal.worker.id:
        allowed = False
    if not allowed:
        raise Forbidden("registering a worker needs an agent token or an admin token")
    worker, token = await svc.register(db, body)
    return WorkerRegistered(worker_id=worker.id, token=token)


class HeartbeatReply(BaseModel):
    sessions: list[str]


@router.post("/workers/{worker_id}/heartbeat", response_model=HeartbeatReply, responses=errors(401, 403))
async def heartbeat(worker_id: str, db: Db, principal: Caller) -> HeartbeatReply:
    return HeartbeatReply(sessions=await svc.heartbeat(db, _require_worker(principal, worker_id)))


@router.post("/workers/{worker_id}/claim", response_model=Assignment, responses={**errors(401, 403), 204: {"description": "Nothing to do"}})
async def claim(worker_id: str, db: Db, principal: Caller, request: Request, wait: float = Query(0, ge=0, le=60)):
    """Take the oldest queued session of this worker's queues; with `wait`, held open until there is one."""
    worker = _require_worker(principal, worker_id)
    settings = request.app.state.settings
    topics = [session_svc.queue_topic(q) for q in await svc.queue_ids(db, worker)]

    async def check():
        assignment = await svc.try_claim(db, worker)
        await db.commit()
        return assignment

    assignment = await request.app.state.notifier.wait_for(topics, check, min(wait, settings.long_poll_s), settings.poll_interval_s)
    if assignment is None:
        return Response(status_code=204)
    return assignment


@router.get("/workers", response_model=list[WorkerView], responses=errors(401))
async def list_workers(db: Db, _user: CurrentUser) -> list[WorkerView]:
    rows = (await db.execute(select(Worker).order_by(Worker.name))).scalars()
    return [WorkerView(id=w.id, name=w.name, hostname=w.hostname, queues=w.queues, status=w.status, cpus=w.cpus,
                       memory_bytes=w.memory_bytes, gpus=w.gpus, run_as=w.run_as, last_heartbeat=w.last_heartbeat) for w in rows]


# --- supervisor routes: authenticated by the session's own token --------------------------------

def _require_session(principal: Principal, session_id: str) -> None:
    if principal.kind != "session" or principal.session_id != session_id:
        raise Forbidden("this route is for the session's supervisor")


@router.post("/sessions/{session_id}/supervisor/status", response_model=SupervisorControl, responses=errors(401, 403, 409))
async def report_status(session_id: str, body: SupervisorStatus, db: Db, principal: Caller, request: Request) -> SupervisorControl:
    _require_session(principal, session_id)
    row = await session_svc.get_session(db, session_id)
    previous = row.status
    await session_svc.supervisor_report(db, row, body)
    if row.status != previous:
        msg = f"status: {row.status}" + (f": {row.error}" if row.status == SessionStatus.failed.value and row.error else "")
        await session_svc.add_event(db, session_id, msg, level="error" if row.status == "failed" else "info")
    await db.commit()
    request.app.state.notifier.notify(session_svc.session_topic(session_id))
    return SupervisorControl(stop=row.stop_requested, status=row.status, extend_until=row.idle_extended_until)


@router.post("/sessions/{session_id}/supervisor/events", status_code=204, responses=errors(401, 403))
async def post_events(session_id: str, body: list[EventIn], db: Db, principal: Caller, request: Request) -> None:
    _require_session(principal, session_id)
    for event in body[:1000]:
        await session_svc.add_event(db, session_id, event.message, level=event.level, ts=event.ts)
    await db.commit()
    request.app.state.notifier.notify(session_svc.session_topic(session_id))


@router.post("/sessions/{session_id}/supervisor/watch", response_model=SupervisorControl, responses=errors(401, 403))
async def watch(session_id: str, db: Db, principal: Caller, request: Request, wait: float = Query(0, ge=0, le=60),
                known_extend: datetime | None = None, known_sync: datetime | None = None) -> SupervisorControl:
    """Held open until there is news for the supervisor (stop, idle extension or sync request differing from what
    it already knows), or `wait` passes: how supervisors learn of user requests."""
    _require_session(principal, session_id)
    settings = request.app.state.settings

    def control(row) -> SupervisorControl:
        return SupervisorControl(stop=row.stop_requested or SessionStatus(row.status).is_final, status=row.status,
                                 extend_until=row.idle_extended_until, sync_requested_at=row.sync_requested_at)

    async def check():
        row = await session_svc.get_session(db, session_id)
        await db.refresh(row)
        await db.commit()
        news = control(row)
        if news.stop or news.extend_until != known_extend or news.sync_requested_at != known_sync:
            return news
        return None

    news = await request.app.state.notifier.wait_for([session_svc.session_topic(session_id)], check,
                                                     min(wait, settings.long_poll_s), settings.poll_interval_s)
    return news or control(await session_svc.get_session(db, session_id))
