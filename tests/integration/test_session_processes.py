"""A session's processes on the worker: ending them (marker, uid, double forks, children that dropped the
marker, SIGKILL after a bound) and the process backend's run_in_session + process_scope.
Split from test_environment.py; the fixtures (a prepared process backend and its user) come from there."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest
from test_environment import backend, base, needs_root, user, wait_gone  # noqa: F401  (fixtures)

from berth.agent import processes
from berth.agent.login_files import session_env

pytestmark = pytest.mark.integration


def _spawn_marked(sid: str, *argv: str, **kw) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "BERTH_SESSION_ID": sid}
    return subprocess.Popen(list(argv), env=env, start_new_session=True, stdout=subprocess.PIPE, text=True, **kw)


def test_kill_session_processes_finds_double_forked():
    sid = "kill-" + uuid.uuid4().hex[:8]
    plain = _spawn_marked(sid, "sleep", "100")
    forker = _spawn_marked(sid, "setsid", "nohup", "bash", "-c", "sleep 100 >/dev/null 2>&1 & echo $!")
    orphan = int(forker.stdout.readline())
    forker.wait(timeout=5)
    other = subprocess.Popen(["sleep", "100"], env={"PATH": "/usr/bin:/bin", "BERTH_SESSION_ID": sid + "x"})
    try:
        t0 = time.monotonic()
        assert processes.kill_session_processes(sid, exclude={other.pid}) == 2
        assert time.monotonic() - t0 < 1.5  # sleep dies on TERM: no wait for the KILL round
        assert plain.wait(timeout=5) == -signal.SIGTERM and wait_gone(orphan)
        assert other.poll() is None  # another session's process is left alone
        assert processes.kill_session_processes(sid) == 0
    finally:
        for p in (plain, other):
            p.kill()
            p.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def test_kill_session_processes_escalates_to_sigkill_within_bound():
    sid = "kill-" + uuid.uuid4().hex[:8]
    stubborn = _spawn_marked(sid, "bash", "-c", "trap '' TERM; echo ready; sleep 100; true")
    assert stubborn.stdout.readline().strip() == "ready"
    try:
        t0 = time.monotonic()
        assert processes.kill_session_processes(sid) == 2  # bash and its sleep (which inherits the ignored TERM)
        elapsed = time.monotonic() - t0
        assert 1.9 < elapsed < 3.5 and stubborn.wait(timeout=1) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


def test_kill_session_processes_ends_children_that_dropped_the_marker():
    sid = "kill-" + uuid.uuid4().hex[:8]
    parent = _spawn_marked(sid, "bash", "-c", "env -i /bin/sleep 100 & echo $!; wait")
    child = int(parent.stdout.readline())
    try:
        for _ in range(100):  # until `env` has exec'd sleep with the emptied environment
            if psutil.Process(child).name() == "sleep":
                break
            time.sleep(0.02)
        assert "BERTH_SESSION_ID" not in psutil.Process(child).environ()
        assert processes.kill_session_processes(sid) == 2  # what the session started is the session's
        assert wait_gone(child) and parent.wait(timeout=5) is not None
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


async def test_backend_runs_in_session_and_its_scope_finds_and_ends_it(user, backend):
    from berth.agent.monitor import SessionSampler

    env = session_env(backend.session_id, user, user.home / ".venv", user.home)
    status, tail = await backend.run_in_session(["bash", "-c", "id -u; sleep 100 >/dev/null 2>&1 & echo $!"],
                                                env=env, cwd=user.home)
    assert status == 0 and tail[0] == str(user.uid)
    job = int(tail[1])
    try:
        assert job in SessionSampler.for_scope(backend.process_scope(), gpus=False).pids  # sampling sees it
        assert await backend.teardown(backend.host, exclude_pids={os.getpid()}) >= 1  # teardown ends it
        assert wait_gone(job)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job, signal.SIGKILL)


@needs_root
def test_kill_session_processes_by_uid(user):
    p = subprocess.Popen(["sleep", "100"], user=user.uid, group=user.gid, extra_groups=[], env={}, start_new_session=True)
    try:
        assert processes.kill_session_processes("unrelated-" + uuid.uuid4().hex, uid=user.uid, exclude={os.getpid()}) == 1
        assert p.wait(timeout=5) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
