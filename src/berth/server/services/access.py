"""Who may see or act on what: the one place every route (and, later, every web page) asks.

Things that live in a project (sessions, their snapshots) follow one rule, `require_role`: a caller with no
role in the project gets the very answer a missing thing gets (404), so whether it exists does not leak;
only a caller who can see it but whose role is too low gets 403. Agents act on their own worker only,
supervisors on their own session only (and read the session they restore).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Conflict, Forbidden, NotFound
from berth.schemas import Role, SessionStatus
from berth.server.db.models import ApiToken, Project, ProjectMember, Session, Snapshot, User, Worker

from . import security

log = logging.getLogger("berth.server")


@dataclass
class Principal:
    """Who is asking: a user, a worker (agent), or one session's supervisor."""

    kind: str  # "user" | "worker" | "session" | "agent-registration"
    user: User | None = None
    worker: Worker | None = None
    session_id: str | None = None

    def require_user(self) -> User:
        if self.user is None:
            raise Forbidden("this route is for users")
        return self.user


# --- users and admins ----------------------------------------------------------------------------

def require_admin(user: User) -> User:
    if not user.is_admin:
        raise Forbidden("admin only")
    return user


def may_create_token(user: User | None, kind: str) -> None:
    if kind == "agent" and not (user and user.is_admin):
        raise Forbidden("only admins can create agent registration tokens")


async def own_token(db: AsyncSession, user: User, token_id: str) -> ApiToken:
    """A user's own token (admins: anyone's); anyone else's is answered as missing."""
    row = await db.get(ApiToken, token_id)
    if row is None or (row.user_id != user.id and not user.is_admin):
        raise NotFound(f"no token {token_id!r}")
    return row


def is_metrics_token(token: str | None, configured: str | None) -> bool:
    return bool(token and configured and security.same_secret(token, configured))


def require_scraper(principal: Principal) -> None:
    """GET /metrics without the metrics token: admins only."""
    if principal.user is None or not principal.user.is_admin:
        raise Forbidden("GET /metrics is for the metrics token or admins")


# --- projects --------------------------------------------------------------------------------------

async def role_in(db: AsyncSession, user: User, project_id: int) -> Role | None:
    if user.is_admin:
        return Role.admin
    row = (await db.execute(select(ProjectMember.role).where(
        ProjectMember.project_id == project_id, ProjectMember.user_id == user.id))).scalar_one_or_none()
    return Role(row) if row else None


async def roles(db: AsyncSession, user: User, project_ids: list[int]) -> dict[int, Role]:
    """The user's role in each of these projects it has one in (one query)."""
    if user.is_admin:
        return dict.fromkeys(project_ids, Role.admin)
    rows = await db.execute(select(ProjectMember.project_id, ProjectMember.role).where(
        ProjectMember.user_id == user.id, ProjectMember.project_id.in_(project_ids)))
    return {pid: Role(role) for pid, role in rows}


async def visible_project_ids(db: AsyncSession, user: User) -> list[int] | None:
    """Projects the user can read; None means all (admin)."""
    if user.is_admin:
        return None
    rows = await db.execute(select(ProjectMember.project_id).where(ProjectMember.user_id == user.id))
    return [r[0] for r in rows]


async def require_role(db: AsyncSession, user: User, project_id: int | None, needed: Role,
                       missing: NotFound | None) -> Role:
    """The one access rule for things that live in a project.

    `project_id` None means the thing looked up does not exist. A caller with no role in the project cannot
    see what it holds, so gets `missing`: the very answer for a thing that does not exist (whether it exists
    does not leak). Only a caller who can see it but whose role is below `needed` gets 403. `missing` None:
    the caller already knows the project exists (a name they chose), so no role at all is 403 too.
    """
    role = await role_in(db, user, project_id) if project_id is not None else None
    if role is None and missing is not None:
        if project_id is not None:
            log.info("user %s denied %s on project id %s (answered as not found)", user.username, needed.value, project_id)
        raise missing
    if role is None or role.rank < needed.rank:
        project = await db.get(Project, project_id)
        raise Forbidden(f"you need the {needed.value} role in project {project.name!r}",
                        log_message=f"user {user.username} denied {needed.value} on project {project.name}")
    return role


# --- sessions and snapshots ------------------------------------------------------------------------

async def session_for_user(db: AsyncSession, user: User, session_id: str, needed: Role = Role.viewer,
                           missing: NotFound | None = None) -> Session:
    """The session, if `user` may see it (any role in its project) and holds `needed`. One answer, `missing`
    (default: no session), whether it does not exist or the user cannot see it."""
    row = await db.get(Session, session_id)
    await require_role(db, user, row.project_id if row else None, needed,
                       missing or NotFound(f"no session {session_id!r}"))
    return row


async def readable_session(db: AsyncSession, principal: Principal, session_id: str,
                           missing: NotFound | None = None) -> Session:
    """Users: viewer role in the session's project. Supervisors: their own session and the one they restore.
    Anything else is answered as `missing` (default: no session), the answer for one that does not exist."""
    missing = missing or NotFound(f"no session {session_id!r}")
    if principal.kind == "session":
        own = await _session(db, principal.session_id)
        if session_id not in (own.id, own.restored_from):
            raise missing
        return await _session(db, session_id)
    return await session_for_user(db, principal.require_user(), session_id, missing=missing)


async def readable_snapshot(db: AsyncSession, principal: Principal, snapshot_id: str) -> Snapshot:
    snap = await db.get(Snapshot, snapshot_id)
    missing = NotFound(f"no snapshot {snapshot_id!r}")
    if snap is None:
        raise missing
    await readable_session(db, principal, snap.session_id, missing)
    return snap


def require_snapshot_lister(principal: Principal, session_id: str | None) -> None:
    if session_id is None and principal.kind == "session":
        raise Forbidden("a session must name the session whose snapshots it lists")


async def uploading_session(db: AsyncSession, principal: Principal, session_id: str) -> Session:
    """Only a session's own supervisor uploads its snapshots, and only while it runs."""
    if principal.kind != "session" or principal.session_id != session_id:
        raise Forbidden("only the session's own supervisor may upload its workspace")
    row = await _session(db, session_id)
    if not SessionStatus(row.status).is_running:
        raise Conflict(f"session {session_id} is {row.status}: its workspace can no longer be uploaded")
    return row


async def _session(db: AsyncSession, session_id: str) -> Session:
    row = await db.get(Session, session_id)
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return row


# --- agents and supervisors ------------------------------------------------------------------------

def may_register_worker(principal: Principal, worker_id: str | None) -> None:
    """An agent registration token, an admin, or a worker re-registering itself."""
    allowed = principal.kind in ("agent-registration", "worker") or (principal.user is not None and principal.user.is_admin)
    if principal.kind == "worker" and worker_id != principal.worker.id:
        allowed = False
    if not allowed:
        raise Forbidden("registering a worker needs an agent token or an admin token")


def require_worker(principal: Principal, worker_id: str) -> Worker:
    if principal.kind != "worker" or principal.worker.id != worker_id:
        raise Forbidden("this route is for the worker itself")
    return principal.worker


def require_supervisor(principal: Principal, session_id: str) -> None:
    if principal.kind != "session" or principal.session_id != session_id:
        raise Forbidden("this route is for the session's supervisor")
