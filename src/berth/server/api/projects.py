"""Projects and their members; queues."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from berth.fields import Line, Name, WireModel
from berth.schemas import Role
from berth.server.services import accounts, workers

from .deps import Admin, CurrentUser, Db, errors

router = APIRouter(prefix="/api/v1", tags=["projects"])


class ProjectView(BaseModel):
    name: str
    role: Role


@router.get("/projects", response_model=list[ProjectView], responses=errors(401))
async def list_projects(db: Db, user: CurrentUser) -> list[ProjectView]:
    return [ProjectView(name=name, role=role) for name, role in await accounts.list_projects(db, user)]


class NewProject(WireModel):
    name: Name


@router.post("/projects", response_model=ProjectView, status_code=201, responses=errors(401, 409, 422))
async def create_project(body: NewProject, db: Db, user: CurrentUser) -> ProjectView:
    await accounts.create_project(db, user, body.name)
    return ProjectView(name=body.name, role=Role.admin)


class Membership(WireModel):
    username: Line = Field(max_length=64)
    role: Role | None = Field(description="viewer, member or admin; null removes the member")


class MemberView(BaseModel):
    username: str
    role: Role


@router.get("/projects/{name}/members", response_model=list[MemberView], responses=errors(401, 404))
async def list_members(name: str, db: Db, user: CurrentUser) -> list[MemberView]:
    """For anyone with a role in the project; others get the 404 a missing project gets."""
    _role, members = await accounts.project_members(db, user, name)
    return [MemberView(username=u, role=r) for u, r in members]


@router.put("/projects/{name}/members", status_code=204, responses=errors(401, 403, 404, 422))
async def set_member(name: str, body: Membership, db: Db, user: CurrentUser) -> None:
    await accounts.set_member(db, user, name, body.username, body.role)


class QueueView(BaseModel):
    name: str


class NewQueue(WireModel):
    name: Name


@router.get("/queues", response_model=list[QueueView], responses=errors(401))
async def list_queues(db: Db, _user: CurrentUser) -> list[QueueView]:
    return [QueueView(name=n) for n in await workers.queue_names(db)]


@router.post("/queues", response_model=QueueView, status_code=201, responses=errors(401, 403, 409))
async def create_queue(body: NewQueue, db: Db, _admin: Admin) -> QueueView:
    await workers.create_queue(db, body.name)
    return QueueView(name=body.name)
