"""Session lifecycle: launch, view, stop, clone, export, console events, supervisor reports."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth.apps import export_document, validate_config
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.schemas import App, LastSnapshot, LaunchRequest, Links, Role, SessionStatus, SessionView, SshInfo, SupervisorStatus
from berth.server.db.models import Project, Queue, Session, SessionEvent, Snapshot, User, Worker, utcnow

from . import accounts, secretbox, security

log = logging.getLogger("berth.server")

# Which reported transitions a supervisor may make (failed is always allowed while not final).
_ALLOWED = {
    SessionStatus.starting: {SessionStatus.active, SessionStatus.stopping, SessionStatus.stopped},
    SessionStatus.active: {SessionStatus.idle, SessionStatus.stopping, SessionStatus.stopped},
    SessionStatus.idle: {SessionStatus.active, SessionStatus.stopping, SessionStatus.stopped},
    SessionStatus.stopping: {SessionStatus.stopped},
}


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def queue_topic(queue_id: int) -> str:
    return f"queue:{queue_id}"


async def add_event(db: AsyncSession, session_id: str, message: str, level: str = "info", ts: datetime | None = None) -> None:
    db.add(SessionEvent(session_id=session_id, message=message[:8000], level=level, ts=ts or utcnow()))


async def get_session(db: AsyncSession, session_id: str) -> Session:
    row = await db.get(Session, session_id)
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return row


async def readable_session(db: AsyncSession, user: User, session_id: str, needed: Role = Role.viewer,
                           missing: NotFound | None = None) -> Session:
    """The session, if `user` may see it (any role in its project) and holds `needed`. One answer, `missing`
    (default: no session), whether it does not exist or the user cannot see it."""
    row = await db.get(Session, session_id)
    await accounts.require_role(db, user, row.project_id if row else None, needed,
                                missing or NotFound(f"no session {session_id!r}"))
    return row


async def launch(db: AsyncSession, user: User, request: LaunchRequest) -> Session:
    config = validate_config(request.app, request.config)
    queue = (await db.execute(select(Queue).where(Queue.name == config.queue))).scalar_one_or_none()
    if queue is None:
        known = ", ".join(r[0] for r in await db.execute(select(Queue.name).order_by(Queue.name))) or "none yet"
        raise InvalidInput(f"config.queue: unknown queue {config.queue!r} (known: {known})", field="config.queue")
    if config.restore_session:
        try:
            await readable_session(db, user, config.restore_session)
        except NotFound:
            raise InvalidInput(f"config.restore_session: no session {config.restore_session!r} you can read",
                               field="config.restore_session") from None
    project = await accounts.project_for_launch(db, user, config.project)
    session_id = security.new_id()
    row = Session(
        id=session_id, app=request.app.value, name=config.name or f"{request.app.value}-{session_id[:6]}",
        project_id=project.id, owner_id=user.id, queue_id=queue.id, tags=config.tags,
        config=config.model_dump(mode="json"), secrets=secretbox.box(db).seal_values(request.secrets.model_dump(exclude_none=True)),
        status=SessionStatus.queued.value, restored_from=config.restore_session,
    )
    db.add(row)
    await db.flush()
    await add_event(db, session_id, f"status: queued on {queue.name!r} by {user.username}")
    return row


async def view(db: AsyncSession, row: Session) -> SessionView:
    project = await db.get(Project, row.project_id)
    owner = await db.get(User, row.owner_id)
    queue = await db.get(Queue, row.queue_id)
    worker = await db.get(Worker, row.worker_id) if row.worker_id else None
    status = SessionStatus(row.status)
    ssh = _open_ssh(db, row) if row.ssh and status.is_running else None
    return SessionView(
        id=row.id, app=App(row.app), name=row.name, project=project.name, tags=list(row.tags or []), queue=queue.name,
        status=status, dashboard_status=status.dashboard, idle_seconds=row.idle_seconds if status == SessionStatus.idle else 0.0,
        restored_from=row.restored_from, worker=worker.name if worker else None, error=row.error, owner=owner.username,
        config=row.config, ssh=ssh, links=Links() if row.app == App.remote_desktop.value else None,
        created_at=row.created_at, started_at=row.started_at, stopped_at=row.stopped_at,
        last_snapshot=await _last_snapshot(db, row.id),
        kept_alive_by=row.kept_alive_by if status.is_running else None, idle_extended_until=row.idle_extended_until,
    )


def _open_ssh(db: AsyncSession, row: Session) -> SshInfo:
    ssh = dict(row.ssh)
    try:
        ssh["password"] = secretbox.box(db).open(ssh["password"])
    except BerthError as exc:  # the connection details stay useful; the key mismatch goes to the log
        log.error("session %s: %s", row.id, exc.log_message)
        ssh["password"] = "(unavailable: see the server log)"
    return SshInfo.model_validate(ssh)


async def _last_snapshot(db: AsyncSession, session_id: str) -> LastSnapshot | None:
    snap = (await db.execute(select(Snapshot).where(Snapshot.session_id == session_id)
                             .order_by(Snapshot.created_at.desc(), Snapshot.id).limit(1))).scalar_one_or_none()
    if snap is None:
        return None
    return LastSnapshot(id=snap.id, created_at=snap.created_at, files=snap.files, bytes_total=snap.bytes_total,
                        bytes_new=snap.bytes_stored_new)


async def list_sessions(db: AsyncSession, user: User, *, status: list[str] | None, project: str | None,
                        app: str | None, limit: int) -> list[Session]:
    query = select(Session).order_by(Session.created_at.desc()).limit(limit)
    visible = await accounts.visible_project_ids(db, user)
    if visible is not None:
        query = query.where(Session.project_id.in_(visible))
    if status:
        query = query.where(Session.status.in_(status))
    if app:
        query = query.where(Session.app == app)
    if project:
        query = query.join(Project, Project.id == Session.project_id).where(Project.name == project)
    return list((await db.execute(query)).scalars())


async def request_stop(db: AsyncSession, row: Session, by: str) -> Session:
    status = SessionStatus(row.status)
    if status.is_final or status == SessionStatus.stopping:
        return row
    if status == SessionStatus.queued:
        await finish(db, row, SessionStatus.stopped, None)
        await add_event(db, row.id, f"status: stopped before it started ({by})")
        return row
    row.stop_requested = True
    row.status = SessionStatus.stopping.value
    row.updated_at = utcnow()
    await add_event(db, row.id, f"status: stopping ({by})")
    return row


async def request_sync(db: AsyncSession, row: Session, by: str) -> None:
    status = SessionStatus(row.status)
    if status not in (SessionStatus.active, SessionStatus.idle):
        raise Conflict(f"session {row.id} is {status.value}: only a running session can sync its workspace")
    row.sync_requested_at = utcnow()
    await add_event(db, row.id, f"workspace: sync requested by {by}")


async def finish(db: AsyncSession, row: Session, status: SessionStatus, error: str | None) -> None:
    row.status = status.value
    row.error = error
    row.stopped_at = utcnow()
    row.updated_at = row.stopped_at
    row.secrets = {}  # credentials are only needed at setup


def export(row: Session) -> dict[str, Any]:
    return export_document(row.app, row.config)


def clone_config(row: Session, overrides: dict[str, Any]) -> dict[str, Any]:
    config = dict(row.config)
    config.update(overrides)
    config["restore_session"] = overrides.get("restore_session", row.id)
    return config


async def events_after(db: AsyncSession, session_id: str, after: int, limit: int) -> list[SessionEvent]:
    rows = await db.execute(select(SessionEvent).where(SessionEvent.session_id == session_id, SessionEvent.id > after)
                            .order_by(SessionEvent.id).limit(limit))
    return list(rows.scalars())


async def supervisor_report(db: AsyncSession, row: Session, report: SupervisorStatus) -> Session:
    """Apply a supervisor's status report; a session the server already ended answers 409 so it tears down."""
    current = SessionStatus(row.status)
    new = report.status
    if current.is_final:
        if new == current:
            return row
        raise Conflict(f"session {row.id} is already {current.value}")
    if new != current and new != SessionStatus.failed and new not in _ALLOWED.get(current, set()):
        raise Conflict(f"session {row.id}: {current.value} -> {new.value} is not a valid transition")
    if report.ssh is not None:
        row.ssh = {**report.ssh.model_dump(), "password": secretbox.box(db).seal(report.ssh.password)}
    if report.idle_seconds is not None:
        row.idle_seconds = report.idle_seconds
    if report.kept_alive_by is not None:
        row.kept_alive_by = report.kept_alive_by[:20]
    if new != current:
        if new.is_final:
            await finish(db, row, new, report.error)
        else:
            row.status = new.value
            if new == SessionStatus.active and row.started_at is None:
                row.started_at = utcnow()
    row.updated_at = utcnow()
    if new == SessionStatus.failed and report.error:
        row.error = report.error
    return row


async def fail_sessions_of_worker(db: AsyncSession, worker: Worker, reason: str) -> list[str]:
    running = [s.value for s in SessionStatus if s.is_running]
    ids = [r[0] for r in await db.execute(select(Session.id).where(Session.worker_id == worker.id, Session.status.in_(running)))]
    if ids:
        await db.execute(update(Session).where(Session.id.in_(ids), Session.status.in_(running)).values(
            status=SessionStatus.failed.value, error=reason, stopped_at=utcnow(), updated_at=utcnow(), secrets={}))
        for sid in ids:
            await add_event(db, sid, f"status: failed: {reason}", level="error")
    return ids
