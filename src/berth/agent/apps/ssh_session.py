"""The SSH Session app on the worker: a python environment, the workspace (git clone, packages, init script)
and a detached SSH server the user logs in to.

Steps: (venv ‖ workspace + login files → git clone ‖ SSH server) → extra packages → init script → SSH server
(when an init script had to run first). Independent steps run side by side.
"""

from __future__ import annotations

from berth.agent.login_files import session_env
from berth.agent.session_services import Service
from berth.agent.setup.git import clone_git
from berth.agent.setup.init_script import run_init_script
from berth.agent.setup.python_env import create_venv, install_packages
from berth.apps import SshSessionConfig
from berth.schemas import App, Endpoints

from .base import AgentApp, SessionRuntime, WorkspaceSpec, workspace_in_home
from .session_ssh import SessionSsh, all_steps, workspace_spec, write_logins


class SshSessionApp(AgentApp):
    app = App.ssh_session

    def __init__(self, runtime: SessionRuntime):
        super().__init__(runtime)
        self.config: SshSessionConfig
        home = runtime.host.home
        self.venv = home / ".venv"
        self.workspace_dir = workspace_in_home(self.config.workspace, home)
        self.ssh = SessionSsh(runtime, dropbear=self.config.dropbear, env=self._env())

    def workspace(self) -> WorkspaceSpec:
        return workspace_spec(self.config, self.runtime, self.workspace_dir, helper_dir=self.venv / "bin")

    def _env(self) -> dict[str, str]:
        return session_env(self.runtime.session_id, self.runtime.host.run_as, self.venv, self.workspace_dir,
                           extra=self.runtime.app_env)

    async def prepare(self) -> None:
        rt, cfg, emit = self.runtime, self.config, self.runtime.emit
        workspace = self.workspace_dir

        async def python_env() -> None:
            await create_venv(rt.context.python, self.venv, rt.backend)
            emit(f"setup: python environment {self.venv}")

        async def home_and_git() -> None:
            # The workspace directory and the login files (they need the venv's path, not the venv), as the user.
            await write_logins(rt, workspace, self.venv)
            emit(f"setup: workspace {workspace}")
            if cfg.git_repo:
                secrets = rt.assignment.secrets
                await clone_git(cfg.git_repo, workspace, branch=cfg.git_branch, commit=cfg.git_commit,
                                token=secrets.git_token, ssh_key=secrets.git_ssh_key, backend=rt.backend,
                                emit=lambda m: emit(f"git: {m}"), scratch=rt.scratch)

        early_server = [] if cfg.init_script else [self.ssh.start()]  # nothing else must run before it
        await all_steps(python_env(), home_and_git(), *early_server)
        if cfg.packages:
            emit(f"packages: installing {' '.join(cfg.packages)}")
            await install_packages(self.venv, cfg.packages, rt.backend, emit=lambda m: emit(f"packages: {m}"))
        if cfg.init_script:
            emit("init: running init script")
            await run_init_script(cfg.init_script, cwd=workspace, env=self._env(), backend=rt.backend,
                                  emit=lambda m: emit(f"init: {m}"), scratch=rt.scratch)
            emit("init: init script finished")

    async def start(self) -> Endpoints:
        await self.ssh.start()  # when prepare() did not start it early
        return self.ssh.endpoints()

    async def stop(self) -> None:
        await self.ssh.stop()

    def down_reason(self) -> str | None:
        return self.ssh.down_reason()

    def activity_ports(self) -> list[int]:
        return self.ssh.activity_ports()

    def notify_users(self, text: str) -> int:
        return self.ssh.notify_users(text)

    def services(self) -> dict[str, Service]:
        return {**self.ssh.services(), **self.runtime.app_service()}
