"""Queues and who serves them: the online workers per queue (the launch form offers them; a launch onto a queue
no online worker serves says so at once instead of waiting in silence)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import WorkerStatus
from berth.server.db.models import Queue, Worker


@dataclass(frozen=True)
class QueueLoad:
    name: str
    online_workers: int


async def online_workers(db: AsyncSession) -> dict[str, int]:
    """Queue name -> online workers serving it (a worker lists its queues when it registers)."""
    counts: dict[str, int] = {}
    for (names,) in await db.execute(select(Worker.queues).where(Worker.status == WorkerStatus.online.value)):
        for name in set(names or []):
            counts[name] = counts.get(name, 0) + 1
    return counts


async def with_workers(db: AsyncSession) -> list[QueueLoad]:
    counts = await online_workers(db)
    return [QueueLoad(name, counts.get(name, 0)) for (name,) in await db.execute(select(Queue.name).order_by(Queue.name))]


def unserved_warning(queue: str) -> str:
    """The one wording, in the console, the form and `berth launch`."""
    return f"no online worker serves queue {queue!r}: the session waits there until one does"
