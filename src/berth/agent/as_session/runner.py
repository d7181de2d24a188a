"""The supervisor's end: run one helper task with a session's identity and serve its calls.

``run_task`` starts ``python -m berth.agent.as_session.helper UID GID TASK`` (as root it drops to UID/GID
before reading anything), sends the task, relays its console lines and progress, answers its calls
with the `handlers` given (network I/O stays here, with the session's token), and returns the task's
result. A helper that fails, dies or breaks the protocol raises `error` with a message naming the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from berth.errors import BerthError, SetupFailed

from . import protocol

log = logging.getLogger("berth.supervisor")

Handler = Callable[..., Awaitable[Any]]
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Identity:
    """Who a session's file work runs as, in the worker's terms (for a container: the mapped host ids)."""

    uid: int
    gid: int


class _Helper:
    def __init__(self, proc: asyncio.subprocess.Process, task: str, handlers: dict[str, Handler],
                 emit: Callable[[str], None] | None, progress: Callable[[int, int], None] | None):
        self.proc, self.task, self.handlers, self.emit, self.progress = proc, task, handlers, emit, progress
        self.write_lock = asyncio.Lock()
        self.calls: set[asyncio.Task] = set()
        self.stderr: deque[str] = deque(maxlen=20)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.write_lock:
            self.proc.stdin.writelines(protocol.encode(message))
            await self.proc.stdin.drain()

    async def answer(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        handler = self.handlers.get(message.get("m"))
        args = message.get("args")
        try:
            if handler is None or not isinstance(args, dict):
                raise BerthError(f"the helper asked for {message.get('m')!r}, which this task does not offer")
            reply = {"t": "reply", "id": call_id, "value": await handler(**args)}
        except BerthError as exc:
            reply = {"t": "reply", "id": call_id, "error": exc.message}
        except (TypeError, ValueError) as exc:  # the helper's arguments did not fit the handler
            reply = {"t": "reply", "id": call_id, "error": f"bad call: {exc}"}
        with contextlib.suppress(ConnectionError):
            await self.send(reply)

    async def read_stderr(self) -> None:
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr.append(text)
            log.warning("as_session %s: %s", self.task, text)

    async def serve(self) -> dict[str, Any]:
        while True:
            message = await protocol.read_frame(self.proc.stdout.readexactly)
            kind = message.get("t")
            if kind == "emit" and self.emit is not None:
                self.emit(str(message.get("line", "")))
            elif kind == "progress" and self.progress is not None:
                with contextlib.suppress(TypeError, ValueError):
                    self.progress(int(message["done"]), int(message["total"]))
            elif kind == "call":
                call = asyncio.create_task(self.answer(message))
                self.calls.add(call)
                call.add_done_callback(self.calls.discard)
            elif kind in ("done", "error"):
                return message


async def run_task(identity: Identity, task: str, args: dict[str, Any], *, handlers: dict[str, Handler] | None = None,
                   emit: Callable[[str], None] | None = None, progress: Callable[[int, int], None] | None = None,
                   error: type[BerthError] = SetupFailed, on_start: Callable[[int], None] | None = None,
                   on_exit: Callable[[int], None] | None = None) -> Any:
    """Run `task` (see ``helper.TASKS``) as `identity`; `on_start(pid)`/`on_exit(pid)` let the caller keep the
    helper out of the session's resource samples (it works for the supervisor, not for the user)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "berth.agent.as_session.helper", str(identity.uid), str(identity.gid), task,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_ENV, cwd="/", start_new_session=True, limit=1 << 16)
    if on_start:
        on_start(proc.pid)
    helper = _Helper(proc, task, handlers or {}, emit, progress)
    stderr = asyncio.create_task(helper.read_stderr())
    outcome: dict[str, Any] | None = None
    problem = ""
    try:
        await helper.send({"t": "start", "task": task, "args": args})
        outcome = await helper.serve()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # it exited early: its status and stderr say why
    except protocol.ProtocolError as exc:
        problem = f"it broke the protocol ({exc})"
    finally:
        for call in list(helper.calls):
            call.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stderr, 1.0)
        if on_exit:
            on_exit(proc.pid)
    if outcome is not None and outcome.get("t") == "done":
        return outcome.get("result")
    if outcome is not None:
        raise error(str(outcome.get("message", "failed")))
    why = problem or f"it exited with status {proc.returncode}"
    last = next((line for line in reversed(helper.stderr) if line.strip()), "")
    raise error(f"{task} as the session user failed: {why}" + (f": {last}" if last else ""))
