"""The `process` backend: the session's processes run directly on the worker, no container.

As root, each session gets its own system user (so sshd/dropbear can check the per-session password, and
sessions cannot touch each other's files); as non-root, the session runs as the agent's user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

import psutil

from berth.agent.as_session import Identity
from berth.agent.processes import kill_scope
from berth.agent.proctable import Scope
from berth.agent.run_as import RunAs
from berth.agent.session_users import create_session_user, remove_session_user
from berth.agent.setup.commands import run_command

from .base import SessionBackend, SessionHost


def session_user_name(session_id: str) -> str:
    return f"berth-{session_id[:12]}"


class ProcessBackend(SessionBackend):
    name = "process"

    async def prepare(self) -> SessionHost:
        if os.geteuid() == 0:
            home = self.homes_dir / self.session_id
            self.homes_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.homes_dir, 0o755)  # session users must traverse it to reach their home
            run_as = await create_session_user(session_user_name(self.session_id), home, self.password)
            self.host = SessionHost(run_as=run_as, home=home, system_user=True,
                                    socket_dir=self.runtime_dir / self.session_id, socket_gid=run_as.gid)
            return self.host
        home = self.session_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        # Not root: the session is the agent's own user, who owns the session dir anyway.
        self.host = SessionHost(run_as=RunAs.current(home), home=home, system_user=False,
                                socket_dir=self.session_dir / "run", socket_gid=None)
        return self.host

    def identity(self) -> Identity:
        if self.host is None:
            raise RuntimeError("identity() before prepare()")
        return Identity(self.host.run_as.uid, self.host.run_as.gid)

    async def run_in_session(self, argv: list[str], *, env: dict[str, str], cwd: str | Path,
                             stdin: bytes | None = None, on_line: Callable[[str], None] | None = None,
                             pass_fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
        if self.host is None:
            raise RuntimeError("run_in_session() before prepare()")
        return await run_command(argv, run_as=self.host.run_as, env=env, cwd=cwd, stdin=stdin, on_line=on_line,
                                 pass_fds=pass_fds)

    def process_scope(self) -> Scope:
        return self._scope(self.host)

    def _scope(self, host: SessionHost | None) -> Scope:
        """Its marker, and its user when it has one of its own; else the supervisor's children (this process's:
        the setup commands run as the agent's user, without the marker) are the session's load too."""
        if host is not None and host.system_user:
            return Scope(session_id=self.session_id, uids=frozenset({host.run_as.uid}))
        return Scope(session_id=self.session_id, root_pid=os.getpid())

    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        if host is None:  # prepare() cut short: its user may exist already; clean up as for a dead supervisor
            return await self.clean_up_orphan(self.session_id, self.session_dir, runtime_dir=self.runtime_dir)
        killed = await asyncio.to_thread(kill_scope, self._scope(host), exclude=exclude_pids)
        if host and host.system_user:
            await remove_session_user(host.run_as.user)
        return killed

    @classmethod
    async def clean_up_orphan(cls, session_id: str, session_dir: Path, *, runtime_dir: Path) -> int:
        """What a dead supervisor would have torn down: its SSH server, the session's processes, its user,
        its secrets and its socket directory."""
        marker = str(session_dir)
        killed = 0
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or []):  # sshd -f <session dir>/ssh/sshd_config
                    proc.kill()
                    killed += 1
            except psutil.Error:
                continue
        uid = None
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                uid = pwd.getpwnam(session_user_name(session_id)).pw_uid
        scope = Scope(session_id=session_id, uids=frozenset() if uid is None else frozenset({uid}))
        killed += await asyncio.to_thread(kill_scope, scope)
        if uid is not None:
            await remove_session_user(session_user_name(session_id))
        for path in (session_dir / "secrets.json", session_dir / "scratch", session_dir / "run", runtime_dir / session_id):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return killed

    def describe(self) -> str:
        if os.geteuid() == 0:
            return "process backend: session runs as its own system user on the worker"
        return "process backend: session runs as the agent's user on the worker (not root: no per-session user)"
