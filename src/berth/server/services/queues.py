"""Queues and who serves them: the online workers per queue and the backends they offer (the launch form offers
them; a launch onto a queue no online worker serves, or none that can run the session, says so at once instead
of waiting in silence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import WorkerStatus
from berth.server.db.models import Queue, Worker


# What a session needs from a worker, in words for the warnings (the backend names are the agents').
NEEDS_WORDS = {"container": "container images"}


def required_backend(config: dict[str, Any]) -> str | None:
    """The backend a session's worker must offer: container when its config names an image; None: any worker."""
    return "container" if str(config.get("image") or "").strip() else None


@dataclass(frozen=True)
class QueueLoad:
    name: str
    online_workers: int
    backends: dict[str, int] = field(default_factory=dict)  # backend -> online workers of the queue offering it

    def offered(self) -> str:
        return ", ".join(sorted(self.backends)) or "nothing"


async def loads(db: AsyncSession) -> dict[str, QueueLoad]:
    """Queue name -> its online workers and the backends they offer (a worker lists both when it registers)."""
    workers: dict[str, int] = {}
    backends: dict[str, dict[str, int]] = {}
    rows = await db.execute(select(Worker.queues, Worker.backends).where(Worker.status == WorkerStatus.online.value))
    for names, offered in rows:
        for name in set(names or []):
            workers[name] = workers.get(name, 0) + 1
            per_queue = backends.setdefault(name, {})
            for backend in set(offered or ["process"]):
                per_queue[backend] = per_queue.get(backend, 0) + 1
    return {name: QueueLoad(name, count, backends[name]) for name, count in workers.items()}


async def with_workers(db: AsyncSession) -> list[QueueLoad]:
    found = await loads(db)
    return [found.get(name, QueueLoad(name, 0)) for (name,) in await db.execute(select(Queue.name).order_by(Queue.name))]


def unserved_warning(queue: str) -> str:
    """The one wording, in the console, the form and `berth launch`."""
    return f"no online worker serves queue {queue!r}: the session waits there until one does"


def unable_warning(load: QueueLoad, backend: str) -> str:
    """A queue whose online workers cannot run the session (the one wording, as `unserved_warning`)."""
    return (f"no online worker on queue {load.name!r} can run {NEEDS_WORDS.get(backend, backend + ' sessions')} "
            f"(its workers offer: {load.offered()}); the session waits until one does")


def launch_warning(load: QueueLoad | None, name: str, backend: str | None) -> str | None:
    """Why a session launched now would wait: no online worker on its queue, or none that can run it; None: one can."""
    if load is None or not load.online_workers:
        return unserved_warning(name)
    if backend is not None and not load.backends.get(backend):
        return unable_warning(load, backend)
    return None
