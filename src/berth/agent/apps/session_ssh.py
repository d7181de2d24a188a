"""What the apps on the worker share: the session's SSH server (the SSH Session app, a Remote Desktop of type
``ssh``), the login files, the workspace spec, and running setup steps side by side."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from berth.agent.session_services import Service
from berth.agent.ssh import SshServer, SshServerSpec, authorized_keys_text, choose_kind, start_ssh_server
from berth.apps import CommonConfig
from berth.schemas import Endpoints, SshInfo
from berth.workspace.excludes import DEFAULT_EXCLUDES

from .base import SessionRuntime, WorkspaceSpec


def login_wrapper(runtime: SessionRuntime) -> Path:
    """sshd's forced command for every login; in the home: the session user must be able to read it."""
    return runtime.host.home / ".berth" / "session-shell"


async def write_logins(runtime: SessionRuntime, workspace: Path, venv: Path | None,
                       env: dict[str, str] | None = None) -> None:
    """The workspace directory, the login wrapper, ~/.bash_profile and the owner's SSH keys, as the session user."""
    await runtime.act("login_files", {
        "home": str(runtime.host.home), "workspace": str(workspace), "venv": str(venv) if venv else None,
        "session_id": runtime.session_id, "wrapper": str(login_wrapper(runtime)),
        "env": {**(env or {}), **runtime.app_env},
        "authorized_keys": authorized_keys_text(runtime.assignment.owner_ssh_keys)})


def workspace_spec(config: CommonConfig, runtime: SessionRuntime, path: Path, helper_dir: Path | None,
                   ) -> WorkspaceSpec:
    """The persistent workspace at `path`, with the app's excludes and limits (or the worker's defaults)."""
    ctx = runtime.context
    return WorkspaceSpec(path=path, excludes=[*DEFAULT_EXCLUDES, *getattr(config, "workspace_excludes", [])],
                         max_bytes=int((getattr(config, "workspace_max_gb", None) or ctx.workspace_max_gb) * 2**30),
                         sync_interval_s=60 * (getattr(config, "sync_minutes", None) or ctx.sync_minutes),
                         helper_dir=helper_dir)


async def all_steps(*steps) -> None:
    """Run steps side by side; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0] from None


def ssh_service(server: SshServer, bind_host: str) -> Service:
    """The SSH server as the tunnel reaches it: on loopback when it listens on every address."""
    host = "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host
    return Service(protocol="ssh", host=host, port=server.port)


class SessionSsh:
    """The session's SSH server: chosen (``choose_kind``), started, reported as ``Endpoints(ssh=…)``, stopped.
    Every login runs the login wrapper with `env` (``login_files.session_env``)."""

    def __init__(self, runtime: SessionRuntime, *, dropbear: bool, env: dict[str, str]):
        self.runtime, self.env = runtime, env
        self.options: dict[str, str] = {}
        if needed := runtime.backend.ssh_server():  # the backend's sessions need their own kind (a container's)
            self.kind, self.options = needed
            self.kind_reason = f"{self.kind} SSH server, as the {runtime.backend.name} backend needs" + (
                " (the dropbear option does not apply there)" if dropbear else "")
        else:
            self.kind, self.kind_reason = choose_kind(dropbear, os.geteuid() == 0)
        self.server: SshServer | None = None

    def _spec(self) -> SshServerSpec:
        rt = self.runtime
        run_as = rt.host.run_as
        return SshServerSpec(kind=self.kind, run_dir=rt.session_dir / "ssh", home=rt.host.home, user=run_as.user,
                             password=rt.password, authorized_keys=rt.assignment.owner_ssh_keys,
                             shell_wrapper=login_wrapper(rt), bind_host=rt.context.bind_host, env=self.env,
                             uid=run_as.uid, gid=run_as.gid, on_input=rt.note_input, keys_written_by_caller=True,
                             options=self.options)

    async def start(self) -> None:
        """Start the server (the login files must be written: ``write_logins``); again: nothing."""
        if self.server is not None:
            return
        emit = self.runtime.emit
        emit(f"ssh: {self.kind_reason}")
        self.server = await start_ssh_server(self._spec(), log=lambda m: emit(f"ssh: {m}"))

    def endpoints(self) -> Endpoints:
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
            return self.server.failure or "the SSH server exited unexpectedly"
        return None

    def activity_ports(self) -> list[int]:
        return [self.server.port] if self.server is not None else []

    def notify_users(self, text: str) -> int:
        return self.server.notify_terminals(text) if self.server is not None else 0

    def services(self) -> dict[str, Service]:
        return {"ssh": ssh_service(self.server, self.runtime.context.bind_host)} if self.server is not None else {}
