"""Sessions as users see them: launch, list, show, stop, clone, export, console."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from berth.apps import parse_document
from berth.fields import INT32, WireModel
from berth.schemas import ConsoleEvent, LaunchRequest, LaunchSecrets, Role, SessionView
from berth.server.services import sessions as svc

from .deps import CurrentUser, Db, errors

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])


def _notifier(request: Request):
    return request.app.state.notifier


@router.post("", response_model=SessionView, status_code=201, responses=errors(401, 403, 422))
async def launch(body: LaunchRequest, db: Db, user: CurrentUser, request: Request) -> SessionView:
    row = await svc.launch(db, user, body)
    view = await svc.view(db, row)
    await db.commit()
    _notifier(request).notify(svc.queue_topic(row.queue_id))
    return view


@router.get("", response_model=list[SessionView], responses=errors(401, 422))
async def list_sessions(db: Db, user: CurrentUser, status: list[str] | None = Query(None), project: str | None = None,
                        app: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[SessionView]:
    rows = await svc.list_sessions(db, user, status=status, project=project, app=app, limit=limit)
    return [await svc.view(db, r) for r in rows]


@router.get("/{session_id}", response_model=SessionView, responses=errors(401, 403, 404))
async def show(session_id: str, db: Db, user: CurrentUser) -> SessionView:
    return await svc.view(db, await svc.readable_session(db, user, session_id))


@router.post("/{session_id}/stop", response_model=SessionView, responses=errors(401, 403, 404))
async def stop(session_id: str, db: Db, user: CurrentUser, request: Request) -> SessionView:
    row = await svc.readable_session(db, user, session_id, Role.member)
    await svc.request_stop(db, row, f"requested by {user.username}")
    view = await svc.view(db, row)
    await db.commit()
    _notifier(request).notify(svc.session_topic(session_id))
    return view


@router.post("/{session_id}/sync", response_model=SessionView, responses=errors(401, 403, 404, 409))
async def request_sync(session_id: str, db: Db, user: CurrentUser, request: Request) -> SessionView:
    """Ask the session's supervisor to store the workspace now (it answers in the console)."""
    row = await svc.readable_session(db, user, session_id, Role.member)
    await svc.request_sync(db, row, user.username)
    view = await svc.view(db, row)
    await db.commit()
    _notifier(request).notify(svc.session_topic(session_id))
    return view


class CloneRequest(WireModel):
    overrides: dict[str, Any] = Field(default_factory=dict, description="Configuration fields to change in the clone")
    secrets: LaunchSecrets = Field(default_factory=LaunchSecrets)


@router.post("/{session_id}/clone", response_model=SessionView, status_code=201, responses=errors(401, 403, 404, 422))
async def clone(session_id: str, body: CloneRequest, db: Db, user: CurrentUser, request: Request) -> SessionView:
    source = await svc.readable_session(db, user, session_id)
    req = LaunchRequest(app=source.app, config=svc.clone_config(source, body.overrides), secrets=body.secrets)
    return await launch(req, db, user, request)


@router.get("/{session_id}/export", responses=errors(401, 403, 404))
async def export(session_id: str, db: Db, user: CurrentUser) -> dict:
    """The session's configuration as an importable JSON document (no secrets)."""
    return svc.export(await svc.readable_session(db, user, session_id))


@router.get("/{session_id}/events", response_model=list[ConsoleEvent], responses=errors(401, 403, 404, 422))
async def events(session_id: str, db: Db, user: CurrentUser, request: Request, after: int = Query(0, ge=0, le=INT32),
                 wait: float = Query(0, ge=0, le=60), limit: int = Query(500, ge=1, le=5000)) -> list[ConsoleEvent]:
    """Console lines after id `after`; with `wait`, held open until there is one (long poll)."""
    await svc.readable_session(db, user, session_id)
    settings = request.app.state.settings

    async def check():
        rows = await svc.events_after(db, session_id, after, limit)
        if rows:
            return rows
        await db.commit()  # end the read transaction so the next poll sees new rows
        return None

    rows = await _notifier(request).wait_for([svc.session_topic(session_id)], check, min(wait, settings.long_poll_s),
                                             settings.poll_interval_s) or []
    return [ConsoleEvent(id=r.id, ts=r.ts, level=r.level, message=r.message) for r in rows]


config_router = APIRouter(prefix="/api/v1/configs", tags=["sessions"])


class ValidatedConfig(BaseModel):
    app: str
    config: dict[str, Any]


@config_router.post("/validate", response_model=ValidatedConfig, responses=errors(401, 422))
async def validate(document: dict[str, Any], _user: CurrentUser) -> ValidatedConfig:
    """Check an exported configuration file; nothing is created."""
    app, config = parse_document(document)
    return ValidatedConfig(app=app.value, config=config.model_dump(mode="json"))
