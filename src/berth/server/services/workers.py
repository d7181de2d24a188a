"""Workers and queues: registration, heartbeats, claiming sessions from queues, listing, noticing lost workers."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Conflict, NotFound
from berth.schemas import Assignment, LaunchSecrets, SessionStatus, WorkerRegister, WorkerStatus, WorkerView
from berth.server.db.models import Queue, Session, User, Worker, utcnow

from . import notify, secretbox, security
from .sessions import add_event, fail_sessions_of_worker, final_values, queue_topic, session_topic, sources

log = logging.getLogger("berth.server")


async def register(db: AsyncSession, info: WorkerRegister) -> tuple[Worker, str]:
    """Register (or re-register after a restart, keeping the identity so running sessions stay attached)."""
    token = security.new_token("worker")
    worker = await db.get(Worker, info.worker_id) if info.worker_id else None
    if worker is None:
        worker = Worker(id=info.worker_id or security.new_id())
        db.add(worker)
    worker.name, worker.hostname, worker.queues = info.name, info.hostname, sorted(set(info.queues))
    worker.cpus, worker.memory_bytes, worker.gpus = info.cpus, info.memory_bytes, info.gpus
    worker.run_as, worker.is_root = info.run_as, info.is_root
    worker.backends = sorted(set(info.backends))
    worker.token_hash = security.hash_token(token)
    worker.status = WorkerStatus.online.value
    worker.last_heartbeat = utcnow()
    for name in worker.queues:  # an agent's queues exist from the moment it serves them
        if not (await db.execute(select(Queue.id).where(Queue.name == name))).first():
            db.add(Queue(name=name))
    await db.flush()
    return worker, token


async def heartbeat(db: AsyncSession, worker: Worker) -> list[str]:
    """Record a heartbeat; return the ids of the sessions this worker should be running."""
    worker.last_heartbeat = utcnow()
    if worker.status != WorkerStatus.online.value:
        worker.status = WorkerStatus.online.value
    running = [s.value for s in SessionStatus if s.is_running]
    rows = await db.execute(select(Session.id).where(Session.worker_id == worker.id, Session.status.in_(running)))
    return [r[0] for r in rows]


NEVER_RECEIVED = "the agent restarted before it received this session (claimed by its previous run): launch it again"


async def abandon(db: AsyncSession, worker: Worker, session_ids: list[str]) -> list[str]:
    """Fail this worker's sessions that are still `starting` among `session_ids` (compare-and-set on the status)."""
    if not session_ids:
        return []
    rows = await db.execute(select(Session.id).where(Session.id.in_(session_ids), Session.worker_id == worker.id,
                                                     Session.status == SessionStatus.starting.value))
    ids = [r[0] for r in rows]
    if ids:
        await db.execute(update(Session).where(Session.id.in_(ids), Session.status == SessionStatus.starting.value)
                         .values(**final_values(SessionStatus.failed, NEVER_RECEIVED)))
        for sid in ids:
            await add_event(db, sid, f"status: failed: {NEVER_RECEIVED}", level="error")
        notify.after_commit(db, *(session_topic(sid) for sid in ids))
        log.warning("worker %s abandoned session(s) it never received: %s", worker.id, ", ".join(ids))
    return ids


async def queue_ids(db: AsyncSession, worker: Worker) -> list[int]:
    rows = await db.execute(select(Queue.id).where(Queue.name.in_(worker.queues or [])))
    return [r[0] for r in rows]


async def try_claim(db: AsyncSession, worker: Worker) -> Assignment | None:
    """Atomically take the oldest queued session of the worker's queues (compare-and-set on status)."""
    qids = await queue_ids(db, worker)
    if not qids:
        return None
    # Only sessions it can run: one that names an image needs a worker offering the container backend.
    runnable = or_(Session.required_backend.is_(None), Session.required_backend.in_(worker.backends or ["process"]))
    candidates = await db.execute(select(Session.id).where(Session.status == SessionStatus.queued.value, Session.queue_id.in_(qids),
                                                           runnable).order_by(Session.created_at).limit(5))
    for (sid,) in candidates:
        token = security.new_token("session")
        result = await db.execute(update(Session).where(Session.id == sid, Session.status.in_(sources(SessionStatus.starting))).values(
            status=SessionStatus.starting.value, worker_id=worker.id, session_token_hash=security.hash_token(token),
            updated_at=utcnow()))
        if result.rowcount != 1:
            continue  # another worker won
        row = await db.get(Session, sid)
        await db.refresh(row)
        owner = await db.get(User, row.owner_id)
        await add_event(db, sid, f"status: starting on worker {worker.name!r}")
        secrets = LaunchSecrets.model_validate(secretbox.box(db).open_values(row.secrets or {}))
        # Deleted in the claim's own transaction: from now on only the agent holds them. An agent that dies
        # before handing them to the supervisor leaves a session that cannot clone: it fails (relaunch it).
        row.secrets = {}
        return Assignment(session_id=sid, session_token=token, app=row.app, config=row.config, secrets=secrets,
                          owner=owner.username, owner_ssh_keys=list(owner.ssh_keys or []), restored_from=row.restored_from)
    return None


async def claim(db: AsyncSession, worker: Worker, poll: notify.Poll) -> Assignment | None:
    """Take the oldest queued session of the worker's queues; held until there is one or the poll's time is up."""
    topics = [queue_topic(q) for q in await queue_ids(db, worker)]

    async def check():
        assignment = await try_claim(db, worker)
        await db.commit()  # the claim is the agent's once committed; an empty check ends its read transaction
        return assignment

    return await poll.wait_for(topics, check)


async def list_workers(db: AsyncSession) -> list[WorkerView]:
    rows = (await db.execute(select(Worker).order_by(Worker.name))).scalars()
    return [WorkerView(id=w.id, name=w.name, hostname=w.hostname, queues=w.queues, status=w.status, cpus=w.cpus,
                       memory_bytes=w.memory_bytes, gpus=w.gpus, run_as=w.run_as, backends=w.backends or ["process"],
                       last_heartbeat=w.last_heartbeat,
                       tunnel_replica=w.tunnel_replica, tunnel_since=w.tunnel_since) for w in rows]


async def queue_names(db: AsyncSession) -> list[str]:
    return [name for (name,) in await db.execute(select(Queue.name).order_by(Queue.name))]


async def create_queue(db: AsyncSession, name: str) -> Queue:
    if (await db.execute(select(Queue.id).where(Queue.name == name))).first():
        raise Conflict(f"queue {name!r} exists")
    queue = Queue(name=name)
    db.add(queue)
    return queue


async def get_worker(db: AsyncSession, worker_id: str) -> Worker:
    worker = await db.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id!r}")
    return worker


async def reap_lost(db: AsyncSession, timeout_s: float, not_before: datetime) -> list[str]:
    """Mark workers without a recent heartbeat lost and fail their sessions. Idempotent across replicas."""
    now = utcnow()
    if now - not_before < timedelta(seconds=timeout_s):
        return []  # this replica just started: give agents one timeout to reconnect
    cutoff = now - timedelta(seconds=timeout_s)
    rows = await db.execute(select(Worker).where(Worker.status == WorkerStatus.online.value, Worker.last_heartbeat < cutoff))
    failed: list[str] = []
    for worker in rows.scalars():
        worker.status = WorkerStatus.lost.value
        log.warning("worker %s lost (last heartbeat %s)", worker.name, worker.last_heartbeat)
        failed += await fail_sessions_of_worker(db, worker, f"worker {worker.name!r} lost: no heartbeat for {timeout_s:.0f} s")
    return failed
