"""The SSH Session app on the worker: a python environment, the workspace (git clone, packages, init script)
and a detached SSH server the user logs in to.

Steps: (venv ‖ workspace + login files → git clone ‖ SSH server) → extra packages → init script → SSH server
(when an init script had to run first). Independent steps run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from berth.agent.login_files import session_env
from berth.agent.session_services import Service
from berth.agent.setup.git import clone_git
from berth.agent.setup.init_script import run_init_script
from berth.agent.setup.python_env import create_venv, install_packages
from berth.agent.ssh import SshServer, SshServerSpec, authorized_keys_text, choose_kind, start_ssh_server
from berth.apps import SshSessionConfig
from berth.schemas import App, Endpoints, SshInfo
from berth.workspace.excludes import DEFAULT_EXCLUDES

from .base import AgentApp, SessionRuntime, WorkspaceSpec, workspace_in_home


class SshSessionApp(AgentApp):
    app = App.ssh_session

    def __init__(self, runtime: SessionRuntime):
        super().__init__(runtime)
        self.config: SshSessionConfig
        home = runtime.host.home
        self.venv = home / ".venv"
        self.workspace_dir = workspace_in_home(self.config.workspace, home)
        self.kind, self.kind_reason = choose_kind(self.config.dropbear, os.geteuid() == 0)
        self.server: SshServer | None = None

    def workspace(self) -> WorkspaceSpec:
        cfg, ctx = self.config, self.runtime.context
        return WorkspaceSpec(path=self.workspace_dir, excludes=[*DEFAULT_EXCLUDES, *cfg.workspace_excludes],
                             max_bytes=int((cfg.workspace_max_gb or ctx.workspace_max_gb) * 2**30),
                             sync_interval_s=60 * (cfg.sync_minutes or ctx.sync_minutes), helper_dir=self.venv / "bin")

    def _env(self) -> dict[str, str]:
        return session_env(self.runtime.session_id, self.runtime.host.run_as, self.venv, self.workspace_dir)

    def _spec(self) -> SshServerSpec:
        rt = self.runtime
        run_as = rt.host.run_as
        return SshServerSpec(kind=self.kind, run_dir=rt.session_dir / "ssh", home=rt.host.home, user=run_as.user,
                             password=rt.password, authorized_keys=rt.assignment.owner_ssh_keys,
                             shell_wrapper=self._wrapper(), bind_host=rt.context.bind_host, env=self._env(),
                             uid=run_as.uid, gid=run_as.gid, on_input=rt.note_input, keys_written_by_caller=True)

    def _wrapper(self) -> Path:
        return self.runtime.host.home / ".berth" / "session-shell"  # the session user must be able to read it

    async def _start_server(self) -> None:
        emit = self.runtime.emit
        emit(f"ssh: {self.kind_reason}")
        self.server = await start_ssh_server(self._spec(), log=lambda m: emit(f"ssh: {m}"))

    async def prepare(self) -> None:
        rt, cfg, emit = self.runtime, self.config, self.runtime.emit
        home, workspace = rt.host.home, self.workspace_dir

        async def python_env() -> None:
            await create_venv(rt.context.python, self.venv, rt.backend)
            emit(f"setup: python environment {self.venv}")

        async def home_and_git() -> None:
            # The workspace directory and the login files (they need the venv's path, not the venv), as the user.
            await rt.act("login_files", {"home": str(home), "workspace": str(workspace), "venv": str(self.venv),
                                         "session_id": rt.session_id, "wrapper": str(self._wrapper()),
                                         "authorized_keys": authorized_keys_text(rt.assignment.owner_ssh_keys)})
            emit(f"setup: workspace {workspace}")
            if cfg.git_repo:
                secrets = rt.assignment.secrets
                await clone_git(cfg.git_repo, workspace, branch=cfg.git_branch, commit=cfg.git_commit,
                                token=secrets.git_token, ssh_key=secrets.git_ssh_key, backend=rt.backend,
                                emit=lambda m: emit(f"git: {m}"), scratch=rt.scratch)

        early_server = [] if cfg.init_script else [self._start_server()]  # nothing else must run before it
        await _all(python_env(), home_and_git(), *early_server)
        if cfg.packages:
            emit(f"packages: installing {' '.join(cfg.packages)}")
            await install_packages(self.venv, cfg.packages, rt.backend, emit=lambda m: emit(f"packages: {m}"))
        if cfg.init_script:
            emit("init: running init script")
            await run_init_script(cfg.init_script, cwd=workspace, env=self._env(), backend=rt.backend,
                                  emit=lambda m: emit(f"init: {m}"), scratch=rt.scratch)
            emit("init: init script finished")

    async def start(self) -> Endpoints:
        if self.server is None:  # not started early by prepare()
            await self._start_server()
        assert self.server is not None
        rt, server = self.runtime, self.server
        user, host = rt.host.run_as.user, rt.advertise_host
        info = SshInfo(host=host, port=server.port, user=user, password=rt.password,
                       command=f"ssh -p {server.port} {user}@{host}", server=self.kind,
                       host_key=server.host_key, host_key_fingerprint=server.host_key_fingerprint)
        rt.emit(f"ssh: ready at {host}:{server.port} as {user} (host key {server.host_key_fingerprint})")
        return Endpoints(ssh=info)

    async def stop(self) -> None:
        if self.server is None:
            return
        with contextlib.suppress(Exception):
            await self.server.stop()
        self.runtime.emit("ssh: server stopped")

    def down_reason(self) -> str | None:
        if self.server is not None and not self.server.alive():
            return "the SSH server exited unexpectedly"
        return None

    def activity_ports(self) -> list[int]:
        return [self.server.port] if self.server is not None else []

    def notify_users(self, text: str) -> int:
        return self.server.notify_terminals(text) if self.server is not None else 0

    def services(self) -> dict[str, Service]:
        return {"ssh": ssh_service(self.server, self.runtime.context.bind_host)} if self.server is not None else {}


def ssh_service(server: SshServer, bind_host: str) -> Service:
    """The SSH server as the tunnel reaches it: on loopback when it listens on every address."""
    host = "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host
    return Service(protocol="ssh", host=host, port=server.port)


async def _all(*steps) -> None:
    """Run steps side by side; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0] from None
