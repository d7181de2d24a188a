"""Users, API tokens, projects and who may do what."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth.apps.common import DEFAULT_PROJECT
from berth.errors import Conflict, InvalidInput, NotFound, Unauthorized
from berth.schemas import Role, SessionStatus
from berth.server.db.models import ApiToken, Project, ProjectMember, Queue, Session, User, Worker, utcnow

from . import access, login_throttle, security
from .access import Principal

log = logging.getLogger("berth.server")
_USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 1024  # the API's user model says the same (api/auth.py NewUser)


async def authenticate(db: AsyncSession, token: str | None, *, agent_token: str | None = None) -> Principal:
    if not token:
        raise Unauthorized("authentication required: log in with `berth login` or send Authorization: Bearer <token>")
    if agent_token and security.same_secret(token, agent_token):
        return Principal(kind="agent-registration")
    kind = security.token_kind(token)
    digest = security.hash_token(token)
    if kind in ("api", "agent", "gateway"):
        row = (await db.execute(select(ApiToken).where(ApiToken.token_hash == digest))).scalar_one_or_none()
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at < utcnow()):
            raise Unauthorized("invalid, expired or revoked token")
        if row.kind == "agent":
            return Principal(kind="agent-registration")
        user = await db.get(User, row.user_id) if row.user_id else None
        if user is None:
            raise Unauthorized("invalid token")
        return Principal(kind="user", user=user)
    if kind == "worker":
        worker = (await db.execute(select(Worker).where(Worker.token_hash == digest))).scalar_one_or_none()
        if worker is None:
            raise Unauthorized("invalid worker token")
        return Principal(kind="worker", worker=worker)
    if kind == "session":
        found = (await db.execute(select(Session.id, Session.status).where(Session.session_token_hash == digest))).first()
        if found is None:
            raise Unauthorized("invalid session token")
        if SessionStatus(found.status).is_final:  # a session's token dies with the session
            raise Unauthorized(f"session {found.id} is {found.status}: its token ended with it")
        return Principal(kind="session", session_id=found.id)
    raise Unauthorized("invalid token")


async def login(db: AsyncSession, username: str, password: str, token_days: float, *, address: str,
                limits: login_throttle.Limits, kind: str = "api") -> tuple[str, User]:
    """`address`: the client's, from the connection (or a configured proxy). Throttled before any hashing.
    `kind`: "api" (a bearer token for the CLI and API) or "web" (a browser's cookie session)."""
    await login_throttle.check(db, limits, username, address)
    user = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()
    # Verify against a dummy hash for unknown users so timing does not reveal which names exist.
    ok = await security.verify_password(user.password_hash if user else await _dummy_hash(), password)
    if user is None or not ok:
        await login_throttle.record_failure(db, limits, username, address)
        await db.commit()  # the failure must count although this request ends in an error (which rolls back)
        raise Unauthorized("wrong username or password", log_message=f"failed login for {username[:64]!r} from {address}")
    await login_throttle.record_success(db, limits, username, address)
    _row, token = await _issue_token(db, user, kind=kind, label="login" if kind == "api" else "browser",
                                     expires_days=token_days)
    return token, user


_DUMMY: list[str] = []


async def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(await security.hash_password("berth-dummy-password"))
    return _DUMMY[0]


async def create_token(db: AsyncSession, user: User | None, *, kind: str, label: str, expires_days: float | None) -> tuple[ApiToken, str]:
    if kind not in ("api", "gateway", "agent"):
        raise InvalidInput("kind: must be api, gateway or agent", field="kind")
    access.may_create_token(user, kind)
    if expires_days is not None and expires_days <= 0:
        raise InvalidInput("expires_days: must be positive", field="expires_days")
    return await _issue_token(db, user, kind=kind, label=label, expires_days=expires_days)


async def _issue_token(db: AsyncSession, user: User | None, *, kind: str, label: str,
                       expires_days: float | None) -> tuple[ApiToken, str]:
    secret = security.new_token(kind)
    row = ApiToken(
        id=security.new_id(), user_id=user.id if user else None, kind=kind, label=label[:128],
        token_hash=security.hash_token(secret),
        expires_at=utcnow() + timedelta(days=expires_days) if expires_days else None,
    )
    db.add(row)
    await db.flush()
    return row, secret


async def list_tokens(db: AsyncSession, user: User) -> list[ApiToken]:
    # Browser sessions are not tokens a user manages: logging out ends them.
    rows = await db.execute(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.kind != "web")
                            .order_by(ApiToken.created_at))
    return list(rows.scalars())


async def revoke_token(db: AsyncSession, user: User, token_id: str) -> ApiToken:
    row = await access.own_token(db, user, token_id)
    row.revoked_at = row.revoked_at or utcnow()
    return row


def check_password(password: str, field: str = "password") -> None:
    if len(password) < PASSWORD_MIN:
        raise InvalidInput(f"{field}: at least {PASSWORD_MIN} characters", field=field)
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f"{field}: at most {PASSWORD_MAX} characters", field=field)


async def change_password(db: AsyncSession, user: User, current: str, new: str, *, keep_secret: str | None,
                          address: str, limits: login_throttle.Limits) -> int:
    """Change the user's password; the current one is required and wrong guesses count as failed logins.
    Everything that was opened with the old password ends: every other browser session is deleted and every
    API and gateway token revoked, except `keep_secret` (the cookie or bearer token making this request).
    Returns how many sessions and tokens ended."""
    check_password(new, "new_password")
    await login_throttle.check(db, limits, user.username, address)
    if not await security.verify_password(user.password_hash, current):
        await login_throttle.record_failure(db, limits, user.username, address)
        await db.commit()  # the failure counts although this request ends in an error (which rolls back)
        raise InvalidInput("current_password: that is not your current password", field="current_password",
                           log_message=f"password change for {user.username}: wrong current password from {address}")
    user.password_hash = await security.hash_password(new)
    kept = security.hash_token(keep_secret) if keep_secret else ""
    ended = (await db.execute(delete(ApiToken).where(
        ApiToken.user_id == user.id, ApiToken.kind == "web", ApiToken.token_hash != kept))).rowcount
    ended += (await db.execute(update(ApiToken).where(
        ApiToken.user_id == user.id, ApiToken.kind.in_(("api", "gateway")), ApiToken.token_hash != kept,
        ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))).rowcount
    log.info("user %s changed their password; %d other sessions and tokens ended", user.username, ended)
    return ended


def remove_ssh_key(user: User, key: str) -> list[str]:
    """Remove one public key (as listed); a key that is not there is a 404 like any missing thing."""
    keys = list(user.ssh_keys or [])
    if key not in keys:
        raise NotFound("no such SSH key")
    user.ssh_keys = [k for k in keys if k != key]
    return user.ssh_keys


async def list_users(db: AsyncSession, actor: User) -> list[User]:
    access.require_admin(actor)
    return list((await db.execute(select(User).order_by(User.username))).scalars())


async def project_members(db: AsyncSession, actor: User, project_name: str) -> tuple[Role, list[tuple[str, Role]]]:
    """The actor's role in the project and its members (username, role), for anyone with a role in it;
    others get the same 404 as for a missing project."""
    project = (await db.execute(select(Project).where(Project.name == project_name))).scalar_one_or_none()
    role = await access.require_role(db, actor, project.id if project else None, Role.viewer,
                                     NotFound(f"no project {project_name!r}"))
    rows = await db.execute(select(User.username, ProjectMember.role).join(User, User.id == ProjectMember.user_id)
                            .where(ProjectMember.project_id == project.id).order_by(User.username))
    return role, [(name, Role(r)) for name, r in rows]


def add_ssh_keys(user: User, lines: list[str]) -> list[str]:
    """Add public keys (kept once each, newest 32) that every session the user launches will accept."""
    keys = []
    for i, line in enumerate(lines):
        parts = line.strip().split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in line:
            raise InvalidInput(f"keys.{i}: not an OpenSSH public key line", field=f"keys.{i}")
        keys.append(" ".join(parts[:3]))
    merged = [k for k in (user.ssh_keys or []) if k not in keys] + keys
    user.ssh_keys = merged[-32:]
    return user.ssh_keys


async def create_user(db: AsyncSession, username: str, password: str, *, is_admin: bool = False) -> User:
    if not _USERNAME.match(username):
        raise InvalidInput("username: lower-case letters, digits, '_', '.', '-' (max 64), starting with a letter", field="username")
    check_password(password)
    if (await db.execute(select(User.id).where(User.username == username))).first():
        raise Conflict(f"user {username!r} exists")
    user = User(username=username, password_hash=await security.hash_password(password), is_admin=is_admin, ssh_keys=[])
    db.add(user)
    await db.flush()
    # Everyone may use the default project, as in the seed's "Interactive Session" project.
    default = await get_or_create_project(db, DEFAULT_PROJECT)
    db.add(ProjectMember(project_id=default.id, user_id=user.id, role=Role.member.value))
    return user


async def bootstrap(db: AsyncSession, admin_password: str | None) -> str | None:
    """First start: the default project and queue, and user 'admin'. Returns a generated password to print once."""
    await get_or_create_project(db, DEFAULT_PROJECT)
    if not (await db.execute(select(Queue.id).where(Queue.name == "default"))).first():
        db.add(Queue(name="default"))
    if (await db.execute(select(User.id).limit(1))).first():
        return None
    generated = None
    if not admin_password:
        admin_password = generated = security.new_password()
    await create_user(db, "admin", admin_password, is_admin=True)
    return generated


async def get_or_create_project(db: AsyncSession, name: str) -> Project:
    project = (await db.execute(select(Project).where(Project.name == name))).scalar_one_or_none()
    if project is None:
        project = Project(name=name)
        db.add(project)
        await db.flush()
    return project


async def list_projects(db: AsyncSession, user: User) -> list[tuple[str, Role]]:
    """The projects the user has a role in, with that role, by name."""
    projects = list((await db.execute(select(Project.id, Project.name).order_by(Project.name))).all())
    held = await access.roles(db, user, [pid for pid, _ in projects])
    return [(name, held[pid]) for pid, name in projects if pid in held]


async def create_project(db: AsyncSession, user: User, name: str) -> Project:
    if (await db.execute(select(Project.id).where(Project.name == name))).first():
        raise Conflict(f"project {name!r} exists")
    return await project_for_launch(db, user, name)


async def project_for_launch(db: AsyncSession, user: User, name: str) -> Project:
    """A new project name creates the project with the launcher as its admin."""
    project = (await db.execute(select(Project).where(Project.name == name))).scalar_one_or_none()
    if project is None:
        project = await get_or_create_project(db, name)
        db.add(ProjectMember(project_id=project.id, user_id=user.id, role=Role.admin.value))
        await db.flush()
        return project
    # The name is taken (a new one would create the project): saying so reveals nothing more than POST /projects' 409.
    await access.require_role(db, user, project.id, Role.member, None)
    return project


async def set_member(db: AsyncSession, actor: User, project_name: str, username: str, role: Role | None) -> None:
    project = (await db.execute(select(Project).where(Project.name == project_name))).scalar_one_or_none()
    await access.require_role(db, actor, project.id if project else None, Role.admin, NotFound(f"no project {project_name!r}"))
    target = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if target is None:
        raise NotFound(f"no user {username!r}")
    row = (await db.execute(select(ProjectMember).where(
        ProjectMember.project_id == project.id, ProjectMember.user_id == target.id))).scalar_one_or_none()
    if role is None:
        if row:
            await db.delete(row)
    elif row:
        row.role = role.value
    else:
        db.add(ProjectMember(project_id=project.id, user_id=target.id, role=role.value))
