"""The workers at a glance (the admins' workers page): running sessions per worker and each worker's latest
host metrics sample, in a fixed number of queries whatever the number of workers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import SessionStatus, WorkerView
from berth.server.db.models import Session, User, WorkerSample

from . import access, workers


@dataclass(frozen=True)
class WorkerRow:
    worker: WorkerView
    running: int
    latest: WorkerSample | None  # None: the agent has posted no host metrics yet


async def overview(db: AsyncSession, actor: User) -> list[WorkerRow]:
    access.require_admin(actor)
    listed = await workers.list_workers(db)
    running_states = [s.value for s in SessionStatus if s.is_running]
    running = dict((await db.execute(select(Session.worker_id, func.count()).where(
        Session.status.in_(running_states), Session.worker_id.is_not(None)).group_by(Session.worker_id))).all())
    newest = (select(WorkerSample.worker_id, func.max(WorkerSample.ts_ms).label("ts"))
              .group_by(WorkerSample.worker_id).subquery())
    samples = (await db.execute(select(WorkerSample).join(newest, (WorkerSample.worker_id == newest.c.worker_id)
                                                          & (WorkerSample.ts_ms == newest.c.ts)))).scalars()
    latest = {s.worker_id: s for s in samples}
    return [WorkerRow(w, running.get(w.id, 0), latest.get(w.id)) for w in listed]
