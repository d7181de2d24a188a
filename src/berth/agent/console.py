"""A session's console as the supervisor writes it: timestamped lines, sent to the server in small batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from datetime import datetime, timezone

from berth.client import BerthClient
from berth.errors import BerthError, Unauthorized
from berth.redaction import redact
from berth.schemas import EventIn

log = logging.getLogger("berth.supervisor")


class Console:
    def __init__(self, client: BerthClient, session_id: str, secrets: list[str] | None = None, flush_every: float = 0.2):
        self._client = client
        self._session_id = session_id
        self._secrets = [s for s in (secrets or []) if s]  # berth.redaction ignores the too short ones
        self._pending: list[EventIn] = []
        self._flush_every = flush_every
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # One flush at a time: two overlapping posts could land out of order and scramble the console.
        self._flushing = asyncio.Lock()

    def redact(self, text: str) -> str:
        """Last line of defence: no secret reaches the console, whatever printed it."""
        return redact(text, self._secrets)

    def add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.append(secret)

    def __call__(self, message: str, level: str = "info") -> None:
        message = self.redact(message.rstrip("\n"))
        self._pending.append(EventIn(ts=datetime.now(timezone.utc), level=level, message=message))
        print(f"[{level}] {message}", file=sys.stderr, flush=True)  # the supervisor's own log file
        self._wake.set()

    def error(self, message: str) -> None:
        self(message, level="error")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_every)  # gather a burst (pip output) into one request
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:500], self._pending[500:]
            try:
                await self._client.post_events(self._session_id, batch)
            except Unauthorized:  # the session has ended and its token with it: nobody will take these lines
                log.warning("dropped %d console line(s) written after the session ended", len(batch) + len(self._pending))
                self._pending = []
                return
            except BerthError as exc:
                log.warning("console lines not delivered yet: %s", exc.message)
                self._pending[:0] = batch
                await asyncio.sleep(1.0)
                return

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in range(5):
            if not self._pending:
                break
            await self.flush()
