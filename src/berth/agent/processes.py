"""Ending every process of a session: those ``berth.agent.proctable`` says belong to its scope (the one
definition, shared with sampling).

Used at teardown (backends), after a dead supervisor (the agent, through its backend) and when a session user
is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterable

import psutil

from .proctable import ProcessTable, Scope


def kill_session_processes(session_id: str, *, uid: int | None = None, exclude: Iterable[int] = frozenset()) -> int:
    """``kill_scope`` of the processes carrying BERTH_SESSION_ID=session_id (and those of uid, when given)."""
    return kill_scope(Scope(session_id=session_id, uids=frozenset() if uid is None else frozenset({uid})),
                      exclude=exclude)


def kill_scope(scope: Scope, *, exclude: Iterable[int] = frozenset()) -> int:
    """SIGTERM, then SIGKILL after ~2 s, every live process of `scope` (its descendants included). Never the
    caller, `exclude` or pid 1, and not the children of ``scope.root_pid`` as such: the caller may share that
    process with other work (see ``proctable.Scope``). Returns how many were signalled."""
    scope = dataclasses.replace(scope, root_pid=None, exclude=frozenset({*scope.exclude, *exclude, os.getpid()}))
    signalled: dict[int, psutil.Process] = {}
    # TERM first so servers can clean up; the KILL round judges every process again (a fresh table),
    # catching what was forked meanwhile.
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
        members, _ = ProcessTable(scope).scan()
        for pid, stat in members.items():
            if stat.state in ("Z", "X"):  # dead, just unreaped: nothing to end
                continue
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc = psutil.Process(pid)
                proc.send_signal(sig)
                signalled[pid] = proc
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in signalled.values()):
            time.sleep(0.05)
    return len(signalled)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # a zombie is dead, just unreaped
    except psutil.NoSuchProcess:
        return False
