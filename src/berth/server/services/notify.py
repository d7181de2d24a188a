"""Wake long-polls quickly on this replica; the database stays the source of truth.

A held request re-reads the database every ``poll_interval`` anyway, so a write on another replica
is seen within that interval; a write on this one wakes waiters at once.

Services announce a change with `after_commit(db, topic)`: waiters are woken when (and only if) the
transaction commits, so a woken poll always finds the change. The app's sessionmaker puts its notifier in
``db.info["notifier"]``; a database session without one (scripts, tests) announces nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
_PENDING = "notify_pending"


def after_commit(db: AsyncSession, *topics: str) -> None:
    """Notify `topics` once `db`'s current transaction commits; a rollback drops them."""
    notifier: Notifier | None = db.info.get("notifier")
    if notifier is None:
        return
    pending: set[str] | None = db.info.get(_PENDING)
    if pending is None:
        pending = db.info[_PENDING] = set()

        def flush(_session) -> None:
            woken = list(pending)
            pending.clear()
            for topic in woken:
                notifier.notify(topic)

        event.listen(db.sync_session, "after_commit", flush)
        event.listen(db.sync_session, "after_rollback", lambda _session: pending.clear())
    pending.update(topics)


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()

    def close(self) -> None:
        """The server is shutting down: held requests answer now (as if their wait ran out), so the
        graceful shutdown is not spent waiting on them and nothing is cancelled mid-request."""
        self._closing.set()

    @property
    def closing(self) -> bool:
        """The server is shutting down: open streams (the console's server-sent events) end instead of waiting again."""
        return self._closing.is_set()

    def notify(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    async def wait_for(self, topics: list[str], check: Callable[[], Awaitable[T | None]], timeout: float, poll_interval: float) -> T | None:
        """Return check()'s first non-None result, or None after timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            result = await check()
            if result is not None:
                return result
            left = deadline - time.monotonic()
            if left <= 0 or self._closing.is_set():
                return None
            waiters = [self._closing, *(self._events.setdefault(t, asyncio.Event()) for t in topics)]
            tasks = [asyncio.ensure_future(w.wait()) for w in waiters]
            try:
                await asyncio.wait(tasks, timeout=min(poll_interval, left), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()


@dataclass(frozen=True)
class Poll:
    """One long poll: the notifier, how long the request may be held, how often the database is re-read."""

    notifier: Notifier
    timeout: float
    interval: float

    async def wait_for(self, topics: list[str], check: Callable[[], Awaitable[T | None]]) -> T | None:
        return await self.notifier.wait_for(topics, check, self.timeout, self.interval)
