"""The supervisor's monitoring loop: sample, post metrics in batches, apply the idle rules, warn, report.

Ties ``monitor`` (what the session does) to ``idle`` (what that means) and the server. The supervisor
starts ``SessionWatchdog.run()`` as a task once the session is active; ``run()`` returns the reason when
the idle limit has passed (the supervisor then stops the session) and otherwise runs until cancelled.
Reporting the status stays with the supervisor (it owns the state machine): ``report`` is called when
the shown status should flip between active and idle, and every ``report_every_s`` meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from berth.client import BerthClient
from berth.errors import BerthError
from berth.metrics import MAX_BATCH, MetricSample

from .idle import IdleState, IdleTracker, duration_text, warn_terminals, warning_message
from .monitor import DEFAULT_INTERVAL_S, SessionSampler

log = logging.getLogger("berth.monitor")


class SessionWatchdog:
    def __init__(self, client: BerthClient, session_id: str, sampler: SessionSampler, tracker: IdleTracker, *,
                 console: Callable[[str], None], report: Callable[[IdleState], Awaitable[Any]],
                 notify_terminals: Callable[[str], int] | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 post_every_s: float = 10.0, report_every_s: float = 30.0, max_buffer: int = 3600):
        self.client, self.id, self.sampler, self.tracker = client, session_id, sampler, tracker
        self.console, self.report = console, report
        self.notify_terminals = notify_terminals  # the SSH server's own channels (SshServer.notify_terminals)
        self.interval_s, self.post_every_s, self.report_every_s = interval_s, post_every_s, report_every_s
        self.buffer: deque[MetricSample] = deque(maxlen=max_buffer)  # kept while the server is away (2 h at 2 s)
        self.state = IdleState(idle=False, idle_seconds=0.0)
        self._shown_idle = self._failing = False
        self._last_post = self._last_report = time.monotonic()

    def extend_until(self, until: datetime | None) -> None:
        """Pass on SupervisorControl.extend_until from every watch / status reply."""
        self.tracker.extend_until(until)

    def _measure(self) -> tuple[MetricSample | None, tuple[float | None, str]]:
        try:
            sample = self.sampler.sample()
            self._failing = False
        except Exception:  # never let sampling kill the session; the idle rules treat None as activity
            if not self._failing:
                log.exception("sampling failed (the session counts as active while it does)")
            self._failing, sample = True, None
        return sample, self.sampler.last_input()

    async def flush(self) -> None:
        self._last_post = time.monotonic()
        while self.buffer:
            batch = list(self.buffer)[:MAX_BATCH]
            try:
                await self.client.post_metrics(self.id, batch)
            except BerthError as exc:  # keep them for the next try
                log.warning("posting metrics failed: %s", exc.message)
                return
            for _ in batch:
                self.buffer.popleft()

    def _warn(self, state: IdleState) -> None:
        message = warning_message(state, self.id)
        reached = warn_terminals(self.sampler.ttys(), message)
        if not reached and self.notify_terminals is not None:  # no pty device we can open: the server's channels
            reached = self.notify_terminals(message)
        self.console(f"idle: {message} (shown on {reached} terminal(s))")

    async def step(self) -> IdleState:
        sample, (last_input, input_source) = await asyncio.to_thread(self._measure)
        if sample is not None:
            self.buffer.append(sample)
        if note := self.tracker.gpu_note(sample):
            self.console(note)
        state = self.state = self.tracker.update(sample, last_input, time.time(), input_source)
        if state.warn:
            self._warn(state)
        now = time.monotonic()
        if state.show_idle != self._shown_idle or now - self._last_report >= self.report_every_s or state.stop:
            self._shown_idle, self._last_report = state.show_idle, now
            await self.report(state)
        if now - self._last_post >= self.post_every_s or state.stop:
            await self.flush()
        return state

    async def run(self) -> str:
        """Until the idle limit passes: then the reason, for the console and the stop request."""
        while True:
            started = time.monotonic()
            state = await self.step()
            if state.stop:
                limit = duration_text(self.tracker.max_idle_s)
                reason = f"idle for {duration_text(state.idle_seconds)} (limit {limit}): shutting down"
                self.console(f"idle: {reason}")
                return reason
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
