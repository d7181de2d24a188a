"""Sessions as users see them: launch, list, show, stop, sync, extend, clone, export, console."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from berth.apps import parse_document
from berth.fields import INT32, WireModel
from berth.metrics import ExtendRequest
from berth.schemas import ConsoleEvent, LaunchRequest, LaunchSecrets, Role, SessionView
from berth.server.services import access
from berth.server.services import sessions as svc

from .deps import CurrentUser, Db, PublicBase, errors, long_poll

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])


@router.post("", response_model=SessionView, status_code=201, responses=errors(401, 403, 422))
async def launch(body: LaunchRequest, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    return await svc.view(db, await svc.launch(db, user, body), base)


@router.get("", response_model=list[SessionView], responses=errors(401, 422))
async def list_sessions(db: Db, user: CurrentUser, base: PublicBase, status: list[str] | None = Query(None),
                        project: str | None = None, app: str | None = None,
                        limit: int = Query(200, ge=1, le=1000)) -> list[SessionView]:
    return await svc.views(db, await svc.list_sessions(db, user, status=status, project=project, app=app, limit=limit), base)


@router.get("/{session_id}", response_model=SessionView, responses=errors(401, 403, 404))
async def show(session_id: str, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    return await svc.view(db, await access.session_for_user(db, user, session_id), base)


@router.post("/{session_id}/stop", response_model=SessionView, responses=errors(401, 403, 404))
async def stop(session_id: str, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    row = await access.session_for_user(db, user, session_id, Role.member)
    return await svc.view(db, await svc.request_stop(db, row, f"requested by {user.username}"), base)


@router.post("/{session_id}/sync", response_model=SessionView, responses=errors(401, 403, 404, 409))
async def request_sync(session_id: str, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    """Ask the session's supervisor to store the workspace now (it answers in the console)."""
    row = await access.session_for_user(db, user, session_id, Role.member)
    return await svc.view(db, await svc.request_sync(db, row, user.username), base)


@router.post("/{session_id}/extend", response_model=SessionView, responses=errors(401, 403, 404, 409, 422))
async def extend(session_id: str, body: ExtendRequest, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    """Postpone the idle shutdown: no idle shutdown before max(earlier extension, now) + hours. The supervisor
    reads it from its next watch or status reply (`extend_until`)."""
    row = await access.session_for_user(db, user, session_id, Role.member)
    return await svc.view(db, await svc.extend(db, row, body.hours, user.username), base)


class CloneRequest(WireModel):
    overrides: dict[str, Any] = Field(default_factory=dict, description="Configuration fields to change in the clone")
    secrets: LaunchSecrets = Field(default_factory=LaunchSecrets)


@router.post("/{session_id}/clone", response_model=SessionView, status_code=201, responses=errors(401, 403, 404, 422))
async def clone(session_id: str, body: CloneRequest, db: Db, user: CurrentUser, base: PublicBase) -> SessionView:
    return await svc.view(db, await svc.clone(db, user, session_id, body.overrides, body.secrets), base)


@router.get("/{session_id}/export", responses=errors(401, 403, 404))
async def export(session_id: str, db: Db, user: CurrentUser) -> dict:
    """The session's configuration as an importable JSON document (no secrets)."""
    return svc.export(await access.session_for_user(db, user, session_id))


@router.get("/{session_id}/events", response_model=list[ConsoleEvent], responses=errors(401, 403, 404, 422))
async def events(session_id: str, db: Db, user: CurrentUser, request: Request, after: int = Query(0, ge=0, le=INT32),
                 wait: float = Query(0, ge=0, le=60), limit: int = Query(500, ge=1, le=5000)) -> list[ConsoleEvent]:
    """Console lines after id `after`; with `wait`, held open until there is one (long poll)."""
    await access.session_for_user(db, user, session_id)
    rows = await svc.wait_for_events(db, session_id, after, limit, long_poll(request, wait))
    return [ConsoleEvent(id=r.id, ts=r.ts, level=r.level, message=r.message) for r in rows]


config_router = APIRouter(prefix="/api/v1/configs", tags=["sessions"])


class ValidatedConfig(BaseModel):
    app: str
    config: dict[str, Any]


@config_router.post("/validate", response_model=ValidatedConfig, responses=errors(401, 422))
async def validate(document: dict[str, Any], db: Db, _user: CurrentUser) -> ValidatedConfig:
    """Check an exported configuration file as a launch would; nothing is created."""
    app, config = parse_document(document, context=svc.config_context(db))
    return ValidatedConfig(app=app.value, config=config.model_dump(mode="json"))
