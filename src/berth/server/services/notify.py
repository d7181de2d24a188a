"""Wake long-polls quickly on this replica; the database stays the source of truth.

A held request re-reads the database every ``poll_interval`` anyway, so a write on another replica
is seen within that interval; a write on this one wakes waiters at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()

    def close(self) -> None:
        """The server is shutting down: held requests answer now (as if their wait ran out), so the
        graceful shutdown is not spent waiting on them and nothing is cancelled mid-request."""
        self._closing.set()

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
