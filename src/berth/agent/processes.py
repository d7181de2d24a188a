"""Finding and ending every process of a session: by its environment marker, or by its user.

Used at teardown (supervisor, backend), after a dead supervisor (agent) and when a session user is removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

import psutil

SESSION_ENV_VAR = "BERTH_SESSION_ID"


def kill_session_processes(session_id: str, *, uid: int | None = None, exclude: Iterable[int] = frozenset()) -> int:
    """SIGTERM, then SIGKILL after ~2 s, every process carrying BERTH_SESSION_ID=session_id (and every
    process of uid, when given). Never the caller, `exclude` or pid 1. Returns how many were signalled."""
    return kill_matching(session_id, uid, {*exclude, os.getpid()})


def _matches(proc: psutil.Process, session_id: str | None, uid: int | None) -> bool:
    try:
        if uid is not None and uid in proc.uids()[:2] and proc.status() != psutil.STATUS_ZOMBIE:
            return True
        return session_id is not None and proc.environ().get(SESSION_ENV_VAR) == session_id
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, a zombie, or not ours to read
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # a zombie is dead, just unreaped
    except psutil.NoSuchProcess:
        return False


def kill_matching(session_id: str | None, uid: int | None, exclude: set[int]) -> int:
    signalled: dict[int, psutil.Process] = {}
    # TERM first so servers can clean up; the KILL round rescans, catching what was forked meanwhile.
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
        for proc in psutil.process_iter():
            if proc.pid > 1 and proc.pid not in exclude and _matches(proc, session_id, uid):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    proc.send_signal(sig)
                    signalled[proc.pid] = proc
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in signalled.values()):
            time.sleep(0.05)
    return len(signalled)
