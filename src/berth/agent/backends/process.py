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
from pathlib import Path

import psutil

from berth.agent.as_session import Identity
from berth.agent.environment import RunAs
from berth.agent.processes import kill_session_processes
from berth.agent.session_users import create_session_user, remove_session_user

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
            self.host = SessionHost(run_as=run_as, home=home, system_user=True)
            return self.host
        home = self.session_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.host = SessionHost(run_as=RunAs.current(home), home=home, system_user=False)
        return self.host

    def identity(self) -> Identity:
        if self.host is None:
            raise RuntimeError("identity() before prepare()")
        return Identity(self.host.run_as.uid, self.host.run_as.gid)

    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        uid = host.run_as.uid if host and host.system_user else None
        killed = await asyncio.to_thread(kill_session_processes, self.session_id, uid=uid, exclude=exclude_pids)
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
        killed += await asyncio.to_thread(kill_session_processes, session_id, uid=uid, exclude={os.getpid()})
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
