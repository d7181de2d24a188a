"""The supervisor's lifecycle under named failures (tests/failures.py), run in this process against a real server.

Each test launches a session through the API as a normal user, claims it as a worker does (this module plays the
agent: it registers, heartbeats and writes the session's files), then runs ``Supervisor(...).run()`` here with a
fixture app or backend. Each checks what the server says (status, error), what the user's console shows, and
that teardown ran: none of the session's processes left, its user removed when root.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from berth.agent.context import SupervisorContext
from berth.agent.session_files import write_session_files
from berth.agent.supervisor import Supervisor
from berth.schemas import Assignment
from conftest import session_processes
from failures import CrashingApp, FailingTeardownBackend, NeverReadyApp, QuietApp, SlowBackend, backend_for

QUEUE = "lifecycle"
PROJECT = "lifecycle-lab"


@dataclass
class Worker:
    id: str
    token: str
    homes_dir: Path


@pytest.fixture(scope="module")
def user(server_only) -> str:
    """A normal user (no admin rights) with a project of their own."""
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "lena", "password": "lena-password"})
    token = httpx.post(s.url + "/api/v1/auth/login", json={"username": "lena", "password": "lena-password"}).json()["token"]
    s.api("POST", "/api/v1/projects", token=token, json={"name": PROJECT})
    return token


@pytest.fixture(scope="module")
def worker(server_only):
    """Registered with the agent token, heartbeating (else the reaper fails its sessions), with a homes dir
    session users can traverse (pytest's temp dirs are private)."""
    s = server_only
    reg = s.api("POST", "/api/v1/workers/register", token=s.agent_token, json={
        "name": "lifecycle-worker", "hostname": "h", "queues": [QUEUE], "cpus": 1, "memory_bytes": 1 << 30,
        "run_as": pwd.getpwuid(os.geteuid()).pw_name, "is_root": os.geteuid() == 0})
    homes = Path(tempfile.mkdtemp(prefix="berth-lifecycle-homes-", dir="/var/tmp"))
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(1.0):
            try:
                httpx.post(f"{s.url}/api/v1/workers/{reg['worker_id']}/heartbeat",
                           headers={"Authorization": f"Bearer {reg['token']}"}, timeout=5)
            except httpx.HTTPError:
                pass

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        yield Worker(reg["worker_id"], reg["token"], homes)
    finally:
        done.set()
        thread.join(5)
        shutil.rmtree(homes, ignore_errors=True)


def claimed_session(stack, user: str, worker: Worker, tmp_path: Path, **context) -> Path:
    """Launch as the user, claim as the worker, write the supervisor's files; the session's directory."""
    view = stack.api("POST", "/api/v1/sessions", token=user,
                     json={"app": "ssh-session", "config": {"project": PROJECT, "queue": QUEUE}})
    r = httpx.post(f"{stack.url}/api/v1/workers/{worker.id}/claim", params={"wait": 10},
                   headers={"Authorization": f"Bearer {worker.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assignment = Assignment.model_validate(r.json())
    assert assignment.session_id == view["id"]
    session_dir = tmp_path / "sessions" / assignment.session_id
    write_session_files(session_dir, assignment, SupervisorContext(
        server=stack.url, homes_dir=worker.homes_dir, runtime_dir=tmp_path / "run", **context))
    return session_dir


def supervise(session_dir: Path, *, app_class=None, backend=None, during: Callable[[], None] | None = None,
              limit_s: float = 30) -> None:
    """Run the supervisor here until it ends; `during` runs meanwhile (in a thread: it uses blocking HTTP).
    A failing `during` still ends the supervisor (as a signal would) before it is raised."""
    async def main() -> None:
        supervisor = Supervisor(session_dir, app_class=app_class, backend=backend)
        run = asyncio.create_task(supervisor.run())
        try:
            if during is not None:
                await asyncio.to_thread(during)
        except BaseException:
            supervisor.stop_event.set()
            await asyncio.wait({run}, timeout=limit_s)
            raise
        done, _ = await asyncio.wait({run}, timeout=limit_s)
        if not done:
            supervisor.stop_event.set()
            await asyncio.wait({run}, timeout=limit_s)
            raise AssertionError(f"the supervisor did not end within {limit_s} s")
        run.result()

    asyncio.run(main())


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def console(stack, user: str, session_id: str) -> list[str]:
    """The console lines the user sees."""
    return [e["message"] for e in stack.api("GET", f"/api/v1/sessions/{session_id}/events", token=user)]


def view(stack, user: str, session_id: str) -> dict:
    return stack.api("GET", f"/api/v1/sessions/{session_id}", token=user)


def assert_torn_down(stack, user: str, session_id: str) -> None:
    lines = console(stack, user, session_id)
    assert "teardown: session processes ended, workspace kept" in lines or any(
        line.startswith("teardown failed:") for line in lines), lines
    assert session_processes(session_id) == []
    if os.geteuid() == 0:
        with pytest.raises(KeyError):
            pwd.getpwnam(f"berth-{session_id[:12]}")


def test_stop_while_the_app_never_becomes_ready_ends_the_session(server_only, user, worker, tmp_path):
    session_dir = claimed_session(server_only, user, worker, tmp_path)
    sid = session_dir.name

    def stop_while_starting() -> None:
        wait_for(lambda: "never-ready app: starting, never ready" in console(server_only, user, sid), "the app to start")
        assert view(server_only, user, sid)["status"] == "starting"
        assert session_processes(sid), "the app's background process runs in the session"
        server_only.api("POST", f"/api/v1/sessions/{sid}/stop", token=user)

    t0 = time.monotonic()
    supervise(session_dir, app_class=NeverReadyApp, during=stop_while_starting)
    assert time.monotonic() - t0 < 20
    v = view(server_only, user, sid)
    assert (v["status"], v["error"]) == ("stopped", None)
    lines = console(server_only, user, sid)
    assert "setup: stopped before the session was ready" in lines
    assert "never-ready app: stopped" in lines  # the app's own stop ran too
    assert lines[-1] == "status: stopped"
    assert_torn_down(server_only, user, sid)


def test_setup_past_its_time_limit_fails_the_session(server_only, user, worker, tmp_path):
    session_dir = claimed_session(server_only, user, worker, tmp_path, setup_timeout_s=2)
    sid = session_dir.name
    t0 = time.monotonic()
    supervise(session_dir, app_class=NeverReadyApp)
    assert 2 <= time.monotonic() - t0 < 15
    v = view(server_only, user, sid)
    assert (v["status"], v["error"]) == ("failed", "setup did not finish within 2 s")
    lines = console(server_only, user, sid)
    assert "setup failed: setup did not finish within 2 s" in lines
    assert "never-ready app: stopped" in lines
    assert_torn_down(server_only, user, sid)


def test_an_app_that_dies_fails_the_session_with_its_reason(server_only, user, worker, tmp_path):
    session_dir = claimed_session(server_only, user, worker, tmp_path)
    sid = session_dir.name

    def crash_after_active() -> None:
        wait_for(lambda: view(server_only, user, sid)["status"] in ("active", "idle", "failed"), "the session to run")
        t0 = time.monotonic()
        wait_for(lambda: view(server_only, user, sid)["status"] == "failed", "the crash to fail the session")
        assert time.monotonic() - t0 < CrashingApp.after_s + 5

    supervise(session_dir, app_class=CrashingApp, during=crash_after_active)
    v = view(server_only, user, sid)
    assert (v["status"], v["error"]) == ("failed", "crashing app: its process exited with status 3")
    lines = console(server_only, user, sid)
    assert any(line.startswith("workspace: final sync stored snapshot") for line in lines), lines
    assert v["last_snapshot"] is not None and v["last_snapshot"]["files"] == 1
    assert lines.index("crashing app: stopped") < lines.index("teardown: session processes ended, workspace kept")
    assert lines[-1] == "status: failed: crashing app: its process exited with status 3"
    assert_torn_down(server_only, user, sid)


def test_a_slow_backend_still_becomes_active_and_stops_cleanly(server_only, user, worker, tmp_path):
    session_dir = claimed_session(server_only, user, worker, tmp_path)
    sid = session_dir.name
    backend = backend_for(SlowBackend, session_dir, delay_s=2.0)

    def use_then_stop() -> None:
        wait_for(lambda: view(server_only, user, sid)["status"] == "active", "the session to be active")
        server_only.api("POST", f"/api/v1/sessions/{sid}/stop", token=user)

    supervise(session_dir, app_class=QuietApp, backend=backend, during=use_then_stop)
    v = view(server_only, user, sid)
    assert (v["status"], v["error"]) == ("stopped", None)
    lines = console(server_only, user, sid)
    step = next(line for line in lines if line.startswith("setup: slow backend"))
    assert lines.index(step) < lines.index("status: active") < lines.index("status: stopped")
    assert step.startswith("setup: slow backend (prepare 2 s late), then process backend")
    assert any(line.startswith("setup: session user") for line in lines)
    assert_torn_down(server_only, user, sid)


def test_a_failing_teardown_fails_the_session_and_still_reports(server_only, user, worker, tmp_path):
    session_dir = claimed_session(server_only, user, worker, tmp_path)
    sid = session_dir.name
    backend = backend_for(FailingTeardownBackend, session_dir)

    def stop_when_active() -> None:
        wait_for(lambda: view(server_only, user, sid)["status"] == "active", "the session to be active")
        server_only.api("POST", f"/api/v1/sessions/{sid}/stop", token=user)

    supervise(session_dir, app_class=QuietApp, backend=backend, during=stop_when_active)
    expected = f"teardown failed: RuntimeError: {FailingTeardownBackend.MESSAGE}"
    v = view(server_only, user, sid)
    assert (v["status"], v["error"]) == ("failed", expected)
    lines = console(server_only, user, sid)
    assert expected in lines
    assert lines[-1] == f"status: failed: {expected}"
    assert "teardown: session processes ended, workspace kept" not in lines
    assert_torn_down(server_only, user, sid)  # the real teardown ran before the failure
