"""Session lifecycle: launch, view, stop, sync, extend, clone, export, console events, supervisor reports.

Every change of a session's status goes through one table, `TRANSITIONS`: `transition` for a loaded row,
`sources` for the bulk and compare-and-set updates (claim, a lost worker's sessions). Changes that a
long poll waits for are announced with `notify.after_commit`, so waiters wake once the change is committed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth.apps import export_document, validate_config
from berth.apps.container_args import POLICY_CONTEXT
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.schemas import (
    App, Endpoints, LastSnapshot, LaunchRequest, LaunchSecrets, Links, SessionStatus, SessionView, SupervisorControl, SupervisorStatus,
)
from berth.server.db.models import Project, Queue, Session, SessionEvent, Snapshot, User, Worker, utcnow

from . import access, accounts, notify, queues, secretbox, security

log = logging.getLogger("berth.server")
S = SessionStatus

# Which status may follow which, whoever asks (user, supervisor, agent, reaper). failed is reachable from
# every status that is not final; a final status is never left.
TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    S.queued: frozenset({S.starting, S.stopped, S.failed}),
    S.starting: frozenset({S.active, S.stopping, S.stopped, S.failed}),
    S.active: frozenset({S.idle, S.stopping, S.stopped, S.failed}),
    S.idle: frozenset({S.active, S.stopping, S.stopped, S.failed}),
    S.stopping: frozenset({S.stopped, S.failed}),
    S.stopped: frozenset(),
    S.failed: frozenset(),
}


def check_transition(session_id: str, current: SessionStatus, new: SessionStatus) -> None:
    if new not in TRANSITIONS[current]:
        raise Conflict(f"session {session_id}: {current.value} -> {new.value} is not a valid transition")


def sources(new: SessionStatus) -> list[str]:
    """The statuses `new` may follow: the WHERE of a compare-and-set or bulk update to `new`."""
    return [old.value for old, targets in TRANSITIONS.items() if new in targets]


def final_values(status: SessionStatus, error: str | None) -> dict[str, Any]:
    """The columns a session's end sets (credentials are only needed at setup)."""
    now = utcnow()
    return dict(status=status.value, error=error, stopped_at=now, updated_at=now, secrets={})


def transition(row: Session, new: SessionStatus, error: str | None = None) -> None:
    """Move a loaded session to `new` (409 when the table forbids it)."""
    check_transition(row.id, SessionStatus(row.status), new)
    if new.is_final:
        for column, value in final_values(new, error).items():
            setattr(row, column, value)
        return
    row.status = new.value
    row.updated_at = utcnow()
    if new == S.active and row.started_at is None:
        row.started_at = row.updated_at


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def queue_topic(queue_id: int) -> str:
    return f"queue:{queue_id}"


async def add_event(db: AsyncSession, session_id: str, message: str, level: str = "info", ts: datetime | None = None) -> None:
    db.add(SessionEvent(session_id=session_id, message=message[:8000], level=level, ts=ts or utcnow()))


async def add_events(db: AsyncSession, session_id: str, events: list) -> None:
    """A supervisor's batch of console lines (`EventIn`), at most 1000."""
    for event in events[:1000]:
        await add_event(db, session_id, event.message, level=event.level, ts=event.ts)
    notify.after_commit(db, session_topic(session_id))


async def get_session(db: AsyncSession, session_id: str) -> Session:
    row = await db.get(Session, session_id)
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return row


def config_context(db: AsyncSession) -> dict[str, Any]:
    """What this server's settings add to validating a configuration: the container flags its admin allows
    (`db.info`, set by the app; a database session without it allows none). Every launch is validated with it."""
    return {POLICY_CONTEXT: db.info.get(POLICY_CONTEXT, frozenset())}


async def launch(db: AsyncSession, user: User, request: LaunchRequest) -> Session:
    config = validate_config(request.app, request.config, context=config_context(db))
    queue = (await db.execute(select(Queue).where(Queue.name == config.queue))).scalar_one_or_none()
    if queue is None:
        known = ", ".join(r[0] for r in await db.execute(select(Queue.name).order_by(Queue.name))) or "none yet"
        raise InvalidInput(f"config.queue: unknown queue {config.queue!r} (known: {known})", field="config.queue")
    if config.restore_session:
        try:
            await access.session_for_user(db, user, config.restore_session)
        except NotFound:
            raise InvalidInput(f"config.restore_session: no session {config.restore_session!r} you can read",
                               field="config.restore_session") from None
    project = await accounts.project_for_launch(db, user, config.project)
    session_id = security.new_id()
    dumped = config.model_dump(mode="json")
    row = Session(
        id=session_id, app=request.app.value, name=config.name or f"{request.app.value}-{session_id[:6]}",
        project_id=project.id, owner_id=user.id, queue_id=queue.id, tags=config.tags,
        config=dumped, required_backend=queues.required_backend(dumped),
        secrets=secretbox.box(db).seal_values(request.secrets.model_dump(exclude_none=True)),
        status=SessionStatus.queued.value, restored_from=config.restore_session,
    )
    db.add(row)
    await db.flush()
    await add_event(db, session_id, f"status: queued on {queue.name!r} by {user.username}")
    warning = queues.launch_warning((await queues.loads(db)).get(queue.name), queue.name, row.required_backend)
    if warning:
        await add_event(db, session_id, warning, level="warning")
    notify.after_commit(db, queue_topic(queue.id))
    return row


async def clone(db: AsyncSession, user: User, session_id: str, overrides: dict[str, Any], secrets: LaunchSecrets) -> Session:
    source = await access.session_for_user(db, user, session_id)
    return await launch(db, user, LaunchRequest(app=source.app, config=clone_config(source, overrides), secrets=secrets))


async def view(db: AsyncSession, row: Session, base_url: str | None = None) -> SessionView:
    return (await views(db, [row], base_url))[0]


async def views(db: AsyncSession, rows: list[Session], base_url: str | None = None) -> list[SessionView]:
    """Views of many sessions in a fixed number of queries (names and last snapshots loaded in batches).
    `base_url` (the server as users reach it) makes the gateway links of running remote desktops."""
    if not rows:
        return []
    projects = await _names(db, Project.id, Project.name, {r.project_id for r in rows})
    owners = await _names(db, User.id, User.username, {r.owner_id for r in rows})
    queues = await _names(db, Queue.id, Queue.name, {r.queue_id for r in rows})
    workers = await _names(db, Worker.id, Worker.name, {r.worker_id for r in rows if r.worker_id})
    snapshots = await _last_snapshots(db, [r.id for r in rows])
    out = []
    for row in rows:
        status = SessionStatus(row.status)
        out.append(SessionView(
            id=row.id, app=App(row.app), name=row.name, project=projects[row.project_id], tags=list(row.tags or []),
            queue=queues[row.queue_id], status=status, dashboard_status=status.dashboard,
            idle_seconds=row.idle_seconds if status == SessionStatus.idle else 0.0, restored_from=row.restored_from,
            worker=workers.get(row.worker_id), error=row.error, owner=owners[row.owner_id], config=row.config,
            **_endpoint_fields(db, row, status, base_url),
            created_at=row.created_at, started_at=row.started_at, stopped_at=row.stopped_at, last_snapshot=snapshots.get(row.id),
            kept_alive_by=row.kept_alive_by if status.is_running else None, idle_extended_until=row.idle_extended_until,
        ))
    return out


async def _names(db: AsyncSession, key, name, ids: set) -> dict:
    return {k: v for k, v in await db.execute(select(key, name).where(key.in_(ids)))}


def _endpoint_fields(db: AsyncSession, row: Session, status: SessionStatus, base_url: str | None) -> dict[str, Any]:
    """`ssh` and `links` of a session's view: its app's endpoints while it runs (secrets opened), else none; a
    desktop that can be reached is reached through the gateway, whatever the worker's own address."""
    endpoints = _open_endpoints(db, row) if row.endpoints and status.is_running else Endpoints()
    links = endpoints.links
    if base_url and is_desktop(row) and status in (SessionStatus.active, SessionStatus.idle):
        links = gateway_links(base_url, row.id)
    return {"ssh": endpoints.ssh, "links": links}


def is_desktop(row: Session) -> bool:
    """A remote desktop of type desktop (type ssh serves SSH only)."""
    return row.app == App.remote_desktop.value and (row.config or {}).get("type", "desktop") == "desktop"


def gateway_links(base_url: str, session_id: str) -> Links:
    """The shareable browser link (logs the browser in, then the desktop page) and the direct link: the desktop's
    RFB bytes as a WebSocket, for programs with a token (`Authorization: Bearer` or subprotocol berth.token.<t>)."""
    base = base_url.rstrip("/")
    ws_base = "ws" + base.removeprefix("http") if base.startswith("http") else base
    return Links(browser=f"{base}/s/{session_id}/", direct=f"{ws_base}/s/{session_id}/vnc")


def _open_endpoints(db: AsyncSession, row: Session) -> Endpoints:
    stored = dict(row.endpoints)
    if stored.get("ssh"):
        ssh = dict(stored["ssh"])
        try:
            ssh["password"] = secretbox.box(db).open(ssh["password"])
        except BerthError as exc:  # the connection details stay useful; the key mismatch goes to the log
            log.error("session %s: %s", row.id, exc.log_message)
            ssh["password"] = "(unavailable: see the server log)"
        stored["ssh"] = ssh
    return Endpoints.model_validate(stored)


def _sealed_endpoints(db: AsyncSession, endpoints: Endpoints) -> dict[str, Any]:
    stored = endpoints.model_dump(mode="json", exclude_none=True)
    if endpoints.ssh is not None:
        stored["ssh"]["password"] = secretbox.box(db).seal(endpoints.ssh.password)
    return stored


async def _last_snapshots(db: AsyncSession, session_ids: list[str]) -> dict[str, LastSnapshot]:
    """Each session's newest snapshot, in one query (ties: the smallest id, as listing them does)."""
    rank = func.row_number().over(partition_by=Snapshot.session_id,
                                  order_by=(Snapshot.created_at.desc(), Snapshot.id)).label("rank")
    ranked = (select(Snapshot.session_id, Snapshot.id, Snapshot.created_at, Snapshot.files, Snapshot.bytes_total,
                     Snapshot.bytes_stored_new, rank).where(Snapshot.session_id.in_(session_ids)).subquery())
    rows = await db.execute(select(ranked).where(ranked.c.rank == 1))
    return {r.session_id: LastSnapshot(id=r.id, created_at=r.created_at, files=r.files, bytes_total=r.bytes_total,
                                       bytes_new=r.bytes_stored_new) for r in rows}


async def list_sessions(db: AsyncSession, user: User, *, status: list[str] | None, project: str | None,
                        app: str | None, limit: int) -> list[Session]:
    query = select(Session).order_by(Session.created_at.desc()).limit(limit)
    visible = await access.visible_project_ids(db, user)
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
        transition(row, SessionStatus.stopped)
        await add_event(db, row.id, f"status: stopped before it started ({by})")
    else:
        row.stop_requested = True
        transition(row, SessionStatus.stopping)
        await add_event(db, row.id, f"status: stopping ({by})")
    notify.after_commit(db, session_topic(row.id))
    return row


async def request_sync(db: AsyncSession, row: Session, by: str) -> Session:
    status = SessionStatus(row.status)
    if status not in (SessionStatus.active, SessionStatus.idle):
        raise Conflict(f"session {row.id} is {status.value}: only a running session can sync its workspace")
    row.sync_requested_at = utcnow()
    await add_event(db, row.id, f"workspace: sync requested by {by}")
    notify.after_commit(db, session_topic(row.id))
    return row


async def extend(db: AsyncSession, row: Session, hours: float, by: str) -> Session:
    """No idle shutdown before max(earlier extension, now) + hours; the supervisor reads it from its next
    watch or status reply."""
    if not SessionStatus(row.status).is_running or row.status == SessionStatus.stopping.value:
        raise Conflict(f"session {row.id} is {row.status}: only a running session can be extended")
    now = utcnow()
    base = max(row.idle_extended_until, now) if row.idle_extended_until else now
    row.idle_extended_until = base + timedelta(hours=hours)
    row.updated_at = now
    await add_event(db, row.id, f"idle: shutdown postponed until {row.idle_extended_until:%Y-%m-%d %H:%M:%S} UTC by {by}")
    notify.after_commit(db, session_topic(row.id))
    return row


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


async def wait_for_events(db: AsyncSession, session_id: str, after: int, limit: int, poll: notify.Poll) -> list[SessionEvent]:
    """Console lines after id `after`; held until there is one or the poll's time is up."""
    async def check():
        rows = await events_after(db, session_id, after, limit)
        if rows:
            return rows
        await db.commit()  # end the read transaction so the next poll sees new rows
        return None

    return await poll.wait_for([session_topic(session_id)], check) or []


async def supervisor_report(db: AsyncSession, session_id: str, report: SupervisorStatus) -> SupervisorControl:
    """Apply a supervisor's status report; a session the server already ended answers 409 so it tears down."""
    row = await get_session(db, session_id)
    current = SessionStatus(row.status)
    if current.is_final:
        if report.status != current:
            raise Conflict(f"session {row.id} is already {current.value}")
    else:
        await _apply_report(db, row, report)
    notify.after_commit(db, session_topic(row.id))
    return _control(row, watching=False)


async def _apply_report(db: AsyncSession, row: Session, report: SupervisorStatus) -> None:
    current, new = SessionStatus(row.status), report.status
    if new != current:
        check_transition(row.id, current, new)
    if report.endpoints is not None:
        row.endpoints = _sealed_endpoints(db, report.endpoints)
    if report.idle_seconds is not None:
        row.idle_seconds = report.idle_seconds
    if report.kept_alive_by is not None:
        row.kept_alive_by = report.kept_alive_by[:20]
    if new != current:
        transition(row, new, report.error)
    row.updated_at = utcnow()
    if new == SessionStatus.failed and report.error:
        row.error = report.error
    if new != current:
        failed = new == SessionStatus.failed
        await add_event(db, row.id, f"status: {new.value}" + (f": {row.error}" if failed and row.error else ""),
                        level="error" if failed else "info")


def _control(row: Session, *, watching: bool) -> SupervisorControl:
    """What a supervisor learns; the watch also tells a session the server ended to stop, and of sync requests."""
    if not watching:
        return SupervisorControl(stop=row.stop_requested, status=row.status, extend_until=row.idle_extended_until)
    return SupervisorControl(stop=row.stop_requested or SessionStatus(row.status).is_final, status=row.status,
                             extend_until=row.idle_extended_until, sync_requested_at=row.sync_requested_at)


async def watch(db: AsyncSession, session_id: str, known_extend: datetime | None, known_sync: datetime | None,
                poll: notify.Poll) -> SupervisorControl:
    """Held until there is news for the supervisor (stop, idle extension or sync request differing from what it
    already knows) or the poll's time is up."""
    async def check():
        row = await get_session(db, session_id)
        await db.refresh(row)
        await db.commit()  # end the read transaction so the next poll sees new rows
        news = _control(row, watching=True)
        if news.stop or news.extend_until != known_extend or news.sync_requested_at != known_sync:
            return news
        return None

    news = await poll.wait_for([session_topic(session_id)], check)
    return news or _control(await get_session(db, session_id), watching=True)


async def fail_sessions_of_worker(db: AsyncSession, worker: Worker, reason: str) -> list[str]:
    """A lost worker's running sessions fail (compare-and-set: a session that ended meanwhile keeps its end)."""
    running = [s.value for s in SessionStatus if s.is_running and s.value in sources(SessionStatus.failed)]
    ids = [r[0] for r in await db.execute(select(Session.id).where(Session.worker_id == worker.id, Session.status.in_(running)))]
    if ids:
        await db.execute(update(Session).where(Session.id.in_(ids), Session.status.in_(running))
                         .values(**final_values(SessionStatus.failed, reason)))
        for sid in ids:
            await add_event(db, sid, f"status: failed: {reason}", level="error")
        notify.after_commit(db, *(session_topic(sid) for sid in ids))
    return ids
