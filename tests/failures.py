"""Named failure fixtures for the supervisor: apps and backends that misbehave in one known way each.

Real parts that go wrong, not mocks: the apps are :class:`AgentApp` subclasses for the SSH Session app's config
(they validate the same config) whose processes run in the session as its user through the real backend; the
backends subclass the real :class:`ProcessBackend`. Hand them to ``Supervisor(dir, app_class=..., backend=...)``
(``backend_for`` builds a backend the way the supervisor would).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from berth.agent.apps import AgentApp, SessionRuntime
from berth.agent.apps.base import WorkspaceSpec
from berth.agent.backends import ProcessBackend, SessionBackend, SessionHost
from berth.agent.login_files import session_env
from berth.agent.session_files import read_session_files
from berth.schemas import App, Endpoints


def backend_for(cls: type[SessionBackend], session_dir: Path, **kw) -> SessionBackend:
    """A backend for the session whose files are in `session_dir`, made as the supervisor makes its own."""
    files = read_session_files(session_dir)
    return cls(files.assignment.session_id, session_dir, homes_dir=files.context.homes_dir,
               runtime_dir=files.context.runtime_dir, password=files.password, **kw)


class _FixtureApp(AgentApp):
    """Runs commands in the session the way real apps do (as the session user, with the session's marker)."""

    app = App.ssh_session
    label = "fixture app"

    def __init__(self, runtime: SessionRuntime):
        super().__init__(runtime)
        self.home = runtime.host.home

    def emit(self, message: str) -> None:
        self.runtime.emit(f"{self.label}: {message}")

    def env(self) -> dict[str, str]:
        host = self.runtime.host
        return session_env(self.runtime.session_id, host.run_as, self.home / ".venv", self.home)

    async def run(self, script: str) -> tuple[int, list[str]]:
        return await self.runtime.backend.run_in_session(["/bin/sh", "-c", script], env=self.env(), cwd=str(self.home))

    async def prepare(self) -> None:
        self.emit("prepared")

    async def start(self) -> Endpoints:
        self.emit("serving")
        return Endpoints()

    async def stop(self) -> None:
        self.emit("stopped")


class QuietApp(_FixtureApp):
    """Prepares and starts at once and serves nothing: a session whose lifecycle is all backend and supervisor."""

    label = "quiet app"


class NeverReadyApp(_FixtureApp):
    """prepare() leaves a detached process in the session (only the backend's teardown ends it); start() never
    returns."""

    label = "never-ready app"

    async def prepare(self) -> None:
        status, tail = await self.run("sleep 600 </dev/null >/dev/null 2>&1 &")
        assert status == 0, tail
        self.emit("prepared (a background process is running)")

    async def start(self) -> Endpoints:
        self.emit("starting, never ready")
        await asyncio.get_running_loop().create_future()  # nothing ever completes it
        raise AssertionError("unreachable")


class CrashingApp(_FixtureApp):
    """Has a workspace (one file in it); starts a real process as the session user that exits with status 3
    `after_s` seconds later; down_reason() then reports it."""

    label = "crashing app"
    after_s = 1.0

    def __init__(self, runtime: SessionRuntime):
        super().__init__(runtime)
        self.workspace_dir = self.home / "ws"
        self.process: asyncio.Task | None = None

    def workspace(self) -> WorkspaceSpec:
        return WorkspaceSpec(path=self.workspace_dir, excludes=[], max_bytes=2**30, sync_interval_s=3600.0)

    async def prepare(self) -> None:
        await self.runtime.act("write_files", {"files": [
            {"path": str(self.workspace_dir / "notes.txt"), "content": b"kept after the crash\n", "mode": 0o644}]})
        self.emit("prepared")

    async def start(self) -> Endpoints:
        self.process = asyncio.create_task(self.run(f"sleep {self.after_s}; exit 3"))
        self.emit("serving")
        return Endpoints()

    def down_reason(self) -> str | None:
        if self.process is None or not self.process.done():
            return None
        if self.process.cancelled():
            return f"{self.label}: its process was cancelled"
        if self.process.exception() is not None:
            return f"{self.label}: its process could not run ({self.process.exception()!r})"
        status, _ = self.process.result()
        return f"{self.label}: its process exited with status {status}"

    async def stop(self) -> None:
        if self.process is not None and not self.process.done():
            self.process.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.process
        self.emit("stopped")


class SlowBackend(ProcessBackend):
    """The real process backend, its prepare() `delay_s` seconds late."""

    name = "slow process"

    def __init__(self, *args, delay_s: float = 3.0, **kw):
        super().__init__(*args, **kw)
        self.delay_s = delay_s

    async def prepare(self) -> SessionHost:
        await asyncio.sleep(self.delay_s)
        return await super().prepare()

    def describe(self) -> str:
        return f"slow backend (prepare {self.delay_s:g} s late), then {super().describe()}"


class FailingTeardownBackend(ProcessBackend):
    """The real process backend whose teardown raises after it has done the real teardown."""

    MESSAGE = "the fixture's teardown fails after ending the session"

    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        await super().teardown(host, exclude_pids=exclude_pids)
        raise RuntimeError(self.MESSAGE)
