"""The helper process: ``python -m berth.agent.as_session.helper UID GID TASK`` runs one task as that user.

Started by a root supervisor, it imports what the task needs first (the agent's Python may be unreadable
to session users; only that task's module, to start fast), then drops every privilege (supplementary
groups, gid, uid, in that order) before it reads the task's arguments. A process that changed its credentials is not dumpable, so the session user can signal
it but cannot trace it or read its memory; it holds no secret anyway (network calls stay with the
supervisor, which the helper asks through the channel).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import traceback
from typing import Any

from berth.errors import BerthError

from . import protocol

# task -> module of this package holding a function of that name
TASKS = {"snapshot": "workspace_tasks", "restore": "workspace_tasks", "make_dirs": "file_tasks",
         "write_files": "file_tasks", "login_files": "file_tasks"}


class Future:
    """The reply to one call (concurrent.futures costs a helper ~30 ms of start-up for this)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set_result(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SystemExit(f"as_session helper: cannot act as uid {uid} gid {gid} (running as uid {os.getuid()})")


class Channel:
    """The helper's end: send messages, call the supervisor and wait for its reply (thread-safe)."""

    def __init__(self, rfile, wfile):
        self.rfile, self.wfile = rfile, wfile
        self.write_lock = threading.Lock()
        self.pending: dict[int, Future] = {}
        self.next_id = 0
        self.ids_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        parts = protocol.encode(message)
        with self.write_lock:
            for part in parts:
                self.wfile.write(part)
            self.wfile.flush()

    def emit(self, line: str) -> None:
        self.send({"t": "emit", "line": line})

    def progress(self, done: int, total: int) -> None:
        self.send({"t": "progress", "done": done, "total": total})

    def call_async(self, method: str, **kwargs: Any) -> Future:
        with self.ids_lock:
            self.next_id += 1
            call_id = self.next_id
            future: Future = Future()
            self.pending[call_id] = future
        self.send({"t": "call", "id": call_id, "m": method, "args": kwargs})
        return future

    def call(self, method: str, **kwargs: Any) -> Any:
        return self.call_async(method, **kwargs).result()

    def serve_replies(self) -> None:
        """Reader thread: every frame after the task is a reply to one of our calls."""
        try:
            while True:
                message = protocol.read_frame_blocking(self.rfile)
                with self.ids_lock:
                    future = self.pending.pop(message.get("id"), None)
                if future is None:
                    continue
                if "error" in message:
                    future.set_exception(BerthError(str(message["error"])))
                else:
                    future.set_result(message.get("value"))
        except (EOFError, protocol.ProtocolError, OSError) as exc:
            with self.ids_lock:
                waiting, self.pending = list(self.pending.values()), {}
            for future in waiting:
                future.set_exception(BerthError(f"the supervisor went away ({exc})"))


def main() -> None:
    uid, gid, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if name not in TASKS:
        raise SystemExit(f"as_session helper: unknown task {name!r}")
    task = getattr(importlib.import_module(f"{__package__}.{TASKS[name]}"), name)  # before dropping privileges
    drop_privileges(uid, gid)
    os.umask(0o077)  # what the helper creates is private unless a task says otherwise
    channel = Channel(sys.stdin.buffer, sys.stdout.buffer)
    start = protocol.read_frame_blocking(channel.rfile)
    threading.Thread(target=channel.serve_replies, daemon=True, name="replies").start()
    try:
        args = start.get("args")
        if start.get("task") != name or not isinstance(args, dict):
            raise BerthError(f"the supervisor asked for {start.get('task')!r}, this helper runs {name!r}")
        result = task(channel, **args)
        channel.send({"t": "done", "result": result})
    except BerthError as exc:
        channel.send({"t": "error", "message": exc.message})
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        channel.send({"t": "error", "message": f"{exc.strerror or exc}{where}"})
    except Exception as exc:  # a bug: say what it was; the traceback goes to the supervisor's log
        traceback.print_exc()
        channel.send({"t": "error", "message": f"{type(exc).__name__}: {exc}"})
    sys.stdout.flush()
    os._exit(0)  # the reply reader is blocked on stdin: do not wait for it


if __name__ == "__main__":
    main()
