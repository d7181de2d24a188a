"""The Remote Desktop app on the worker: the workspace and the user's environment variables, then either a
desktop (type ``desktop``: Xvnc + openbox + xterm, VNC on a unix socket the tunnel reaches) or an SSH server
(type ``ssh``: as the SSH Session app's, without its python environment).

Steps: workspace + login files (‖ SSH server, ‖ the X cookie) → desktop.
"""

from __future__ import annotations

import secrets

from berth.agent.backends.base import make_socket_dir
from berth.agent.desktop.stack import DesktopSpec, DesktopStack, xauthority
from berth.agent.login_files import session_bin_dir, session_env
from berth.agent.session_services import Service
from berth.apps import RemoteDesktopConfig
from berth.schemas import App, Endpoints

from .base import AgentApp, SessionRuntime, WorkspaceSpec, workspace_in_home
from .session_ssh import SessionSsh, all_steps, workspace_spec, write_logins


class RemoteDesktopApp(AgentApp):
    app = App.remote_desktop

    def __init__(self, runtime: SessionRuntime):
        super().__init__(runtime)
        self.config: RemoteDesktopConfig
        self.workspace_dir = workspace_in_home(self.config.workspace, runtime.host.home)
        self.ssh = SessionSsh(runtime, dropbear=False, env=self._env()) if self.config.type == "ssh" else None
        self.desktop: DesktopStack | None = None

    @property
    def _xauthority(self):
        return self.runtime.host.home / ".berth" / "Xauthority"

    def workspace(self) -> WorkspaceSpec:
        return workspace_spec(self.config, self.runtime, self.workspace_dir,
                              helper_dir=session_bin_dir(self.runtime.host.home, None))

    def _env(self) -> dict[str, str]:
        rt = self.runtime
        return session_env(rt.session_id, rt.host.run_as, None, self.workspace_dir,
                           extra={**self.config.env, **rt.app_env})

    async def prepare(self) -> None:
        rt = self.runtime

        async def logins() -> None:
            await write_logins(rt, self.workspace_dir, None, env=self.config.env)
            rt.emit(f"setup: workspace {self.workspace_dir}")

        async def cookie() -> None:  # the X display's key: only the session's own programs may connect to it
            await rt.act("write_files", {"files": [{"path": str(self._xauthority), "mode": 0o600,
                                                    "content": xauthority(secrets.token_bytes(16))}]})

        await all_steps(logins(), self.ssh.start() if self.ssh is not None else cookie())

    async def start(self) -> Endpoints:
        if self.ssh is not None:
            await self.ssh.start()
            return self.ssh.endpoints()
        rt, cfg = self.runtime, self.config
        run_as = rt.host.run_as
        spec = DesktopSpec(socket_dir=make_socket_dir(rt.host.socket_dir, rt.host.socket_gid), uid=run_as.uid,
                           gid=run_as.gid, xauthority=self._xauthority, env=self._env(), cwd=self.workspace_dir,
                           name=cfg.name or f"berth {rt.session_id}", host_x11=rt.host.worker_files,
                           programs_from=rt.backend.programs_from())
        self.desktop = DesktopStack(rt.backend, spec, rt.emit)
        await self.desktop.start()
        rt.emit(f"desktop: Xvnc :{self.desktop.display} ({spec.geometry}), openbox, xterm")
        return Endpoints()  # the server makes the links (the gateway's /s/<id>/)

    async def stop(self) -> None:
        if self.ssh is not None:
            await self.ssh.stop()
        if self.desktop is not None:
            await self.desktop.stop()
            self.runtime.emit("desktop: stopped")

    def down_reason(self) -> str | None:
        if self.ssh is not None:
            return self.ssh.down_reason()
        return self.desktop.down_reason() if self.desktop is not None else None

    def activity_ports(self) -> list[int]:
        return self.ssh.activity_ports() if self.ssh is not None else []

    def notify_users(self, text: str) -> int:
        return self.ssh.notify_users(text) if self.ssh is not None else 0

    def services(self) -> dict[str, Service]:
        if self.ssh is not None:
            return {**self.ssh.services(), **self.runtime.app_service()}
        if self.desktop is None:
            return {}
        return {"vnc": Service(protocol="rfb", path=str(self.desktop.socket_path)), **self.runtime.app_service()}
