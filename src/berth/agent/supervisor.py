"""One supervisor process per session: set up, serve, watch, tear down.

Started detached by the agent (``python -m berth.agent.supervisor SESSION_DIR``) so that an agent restart
does not touch running sessions. It talks to the server with the session's own token.

Steps: identity and home (backend) → restore → (venv ‖ workspace + login files → git clone ‖ SSH server) →
extra packages → init script → report active → wait for a stop request → tear down → report stopped.
Everything in the home is done as the session user (``backend.act_as_session``, the setup commands' run_as).
Any failed step fails the session with the step's own message and tears down what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from berth.agent import environment as env
from berth.agent.backends import SessionHost, get_backend
from berth.agent.console import Console
from berth.agent.context import SupervisorContext
from berth.agent.ssh import (SshServer, SshServerSpec, authorized_keys_text, choose_kind, start_ssh_server,
                             undo_inherited_signal_ignores)
from berth.agent.sync import WorkspaceSync
from berth.workspace.excludes import DEFAULT_EXCLUDES
from berth.apps import SshSessionConfig
from berth.client import BerthClient
from berth.errors import BerthError, Conflict, SetupFailed, Unauthorized
from berth.schemas import Assignment, SessionStatus, SshInfo, SupervisorStatus

log = logging.getLogger("berth.supervisor")

ASSIGNMENT_FILE = "assignment.json"
SECRETS_FILE = "secrets.json"
PID_FILE = "supervisor.pid"


def advertise_host(server_url: str, configured: str | None) -> str:
    """The address users reach this worker at: configured, else the one this host uses towards the server."""
    if configured:
        return configured
    host = urlparse(server_url).hostname or "127.0.0.1"
    if host in ("localhost", "127.0.0.1", "::1"):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.getfqdn()


def expand_workspace(path: str, home: Path) -> Path:
    """The workspace inside the session's home: `~`, `~/x` or a relative `x`; anything else is refused here
    too (configs stored before launch validation refused them)."""
    rel = "" if path == "~" else path[2:] if path.startswith("~/") else path
    if rel.startswith("/") or ".." in Path(rel).parts or "\0" in rel:
        raise SetupFailed(f"workspace {path!r} is not inside the session's home (use a relative path or ~/...)")
    return home / rel if rel else home


class Supervisor:
    def __init__(self, session_dir: Path):
        self.dir = session_dir
        data = json.loads((session_dir / ASSIGNMENT_FILE).read_text())
        self.ctx = SupervisorContext.model_validate(data["agent"])
        self.assignment = Assignment.model_validate(data["assignment"])
        secrets_path = session_dir / SECRETS_FILE
        secrets = json.loads(secrets_path.read_text()) if secrets_path.exists() else {}
        self.assignment.secrets = self.assignment.secrets.model_validate(secrets)
        self.id = self.assignment.session_id
        self.config = SshSessionConfig.model_validate(self.assignment.config)
        self.client = BerthClient(self.ctx.server, self.assignment.session_token)
        self.password = data["password"]
        self.console = Console(self.client, self.id, secrets=[self.password, *(v for v in secrets.values() if v)])
        self.backend = get_backend(self.ctx.backend)(
            self.id, session_dir, homes_dir=self.ctx.homes_dir, password=self.password)
        self.host: SessionHost | None = None
        self.ssh: SshServer | None = None
        self.stop_event = asyncio.Event()
        self.final = SessionStatus.stopped
        self.error: str | None = None
        self.workspace_sync: WorkspaceSync | None = None
        self.background: list[asyncio.Task] = []
        self.known_sync = None
        self.known_extend = None
        self.watchdog = None
        self.stop_reason: str | None = None

    async def report(self, status: SessionStatus, **fields) -> bool:
        """Tell the server; False when the server has already ended the session (so we tear down)."""
        await self.console.flush()  # the console tells the setup story before the status changes
        for attempt in range(30):
            try:
                control = await self.client.report(self.id, SupervisorStatus(status=status, **fields))
                if control.stop:
                    self.stop_event.set()
                if self.watchdog is not None:
                    self.watchdog.extend_until(control.extend_until)
                return True
            except (Conflict, Unauthorized):  # the server ended the session (its token died with it): tear down
                self.stop_event.set()
                return False
            except BerthError as exc:
                log.warning("report %s failed (%s), retrying", status.value, exc.message)
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        return False

    async def setup(self) -> None:
        """Prepare everything, running independent steps side by side (venv ‖ git ‖ SSH server when nothing
        has to run before the server), then report the connection details."""
        c, cfg = self.console, self.config
        t0 = time.monotonic()
        c(f"setup: {self.backend.describe()}")
        self.host = await self.backend.prepare()
        run_as, home = self.host.run_as, self.host.home
        c(f"setup: session user {run_as.user!r}, home {home}")
        from berth.agent.monitor import SessionSampler

        self.sampler = SessionSampler.for_session(self.id, system_uid=run_as.uid if self.host.system_user else None)
        # Everything done in the home runs as the session user; the helpers doing it are not the user's load.
        self.act = functools.partial(self.backend.act_as_session, on_start=self.sampler.ignore, on_exit=self.sampler.unignore)
        workspace = expand_workspace(cfg.workspace, home)
        max_gb = cfg.workspace_max_gb or self.ctx.workspace_max_gb
        self.workspace_sync = WorkspaceSync(
            self.client, self.id, workspace, self.dir / "sync", interval_s=60 * (cfg.sync_minutes or self.ctx.sync_minutes),
            excludes=[*DEFAULT_EXCLUDES, *cfg.workspace_excludes], max_bytes=int(max_gb * 2**30), emit=c, act=self.act)
        if self.assignment.restored_from:  # before git, init script and SSH server: they see the restored files
            await self.workspace_sync.restore(self.assignment.restored_from)
        venv = home / ".venv"
        scratch = self.dir / "scratch"
        scratch.mkdir(mode=0o700, exist_ok=True)
        wrapper = self.dir / "login" / "session-shell"
        if self.host.system_user:  # the wrapper must be readable by the session user: keep it in the home
            wrapper = home / ".berth" / "session-shell"
        session_env = env.session_env(self.id, run_as, venv, workspace)
        kind, reason = choose_kind(cfg.dropbear, os.geteuid() == 0)
        spec = SshServerSpec(kind=kind, run_dir=self.dir / "ssh", home=home, user=run_as.user, password=self.password,
                             authorized_keys=self.assignment.owner_ssh_keys, shell_wrapper=wrapper,
                             bind_host=self.ctx.bind_host, env=session_env, uid=run_as.uid, gid=run_as.gid,
                             on_input=self.sampler.note_input, keys_written_by_caller=True)

        async def python_env() -> None:
            await env.create_venv(self.ctx.python, venv, run_as)
            c(f"setup: python environment {venv}")

        async def home_and_git() -> None:
            # The workspace directory and the login files (they need the venv's path, not the venv), as the user.
            await self.act("login_files", {"home": str(home), "workspace": str(workspace), "venv": str(venv),
                                           "session_id": self.id, "wrapper": str(wrapper),
                                           "authorized_keys": authorized_keys_text(self.assignment.owner_ssh_keys)})
            c(f"setup: workspace {workspace}")
            if cfg.git_repo:
                secrets = self.assignment.secrets
                await env.clone_git(cfg.git_repo, workspace, branch=cfg.git_branch, commit=cfg.git_commit,
                                    token=secrets.git_token, ssh_key=secrets.git_ssh_key, run_as=run_as,
                                    emit=lambda m: c(f"git: {m}"), scratch=scratch)

        async def ssh_server() -> None:
            c(f"ssh: {reason}")
            self.ssh = await start_ssh_server(spec, log=lambda m: c(f"ssh: {m}"))

        # The init script runs before the SSH server starts; without one the server can start right away.
        early_ssh = not cfg.init_script
        await _all(python_env(), home_and_git(), *([ssh_server()] if early_ssh else []))
        _remove(self.dir / SECRETS_FILE)  # credentials were only needed to clone
        if cfg.packages:
            c(f"packages: installing {' '.join(cfg.packages)}")
            await env.install_packages(venv, cfg.packages, run_as, emit=lambda m: c(f"packages: {m}"))
        if cfg.init_script:
            c("init: running init script")
            await env.run_init_script(cfg.init_script, cwd=workspace, env=session_env, run_as=run_as,
                                      emit=lambda m: c(f"init: {m}"), scratch=scratch)
            c("init: init script finished")
        if not early_ssh:
            await ssh_server()
        host = advertise_host(self.ctx.server, self.ctx.advertise_host)
        info = SshInfo(host=host, port=self.ssh.port, user=run_as.user, password=self.password,
                       command=f"ssh -p {self.ssh.port} {run_as.user}@{host}", server=kind,
                       host_key=self.ssh.host_key, host_key_fingerprint=self.ssh.host_key_fingerprint)
        c(f"ssh: ready at {host}:{self.ssh.port} as {run_as.user} (host key {self.ssh.host_key_fingerprint}); "
          f"setup took {time.monotonic() - t0:.2f} s")
        await self.report(SessionStatus.active, ssh=info)
        self.background.append(asyncio.create_task(self.workspace_sync.periodic()))
        self.start_watchdog()
        self.sync_server = await self.workspace_sync.serve_socket(self.socket_dir(), venv / "bin",
                                                                  run_as.gid if self.host.system_user else None)

    def socket_dir(self) -> Path:
        """Where the supervisor's sockets for the session live: root's, outside anything the user can change."""
        if self.host is not None and self.host.system_user:
            return self.ctx.runtime_dir / self.id
        return self.dir / "run"

    def start_watchdog(self) -> None:
        """Metrics and idle rules (berth.agent.watchdog); at the idle limit it asks for the stop."""
        from berth.agent.idle import IdleTracker
        from berth.agent.watchdog import SessionWatchdog

        self.sampler.set_ssh_ports([self.ssh.port])
        tracker = IdleTracker.from_config(self.config, input_window_s=self.ctx.idle_input_window_s,
                                          warn_before_s=self.ctx.idle_warn_before_s,
                                          # short limits must still show "idle" before they end
                                          idle_status_after_s=min(60.0, self.config.max_idle_hours * 360))
        self.watchdog = SessionWatchdog(self.client, self.id, self.sampler, tracker,
                                        console=self.console, report=self._report_idle,
                                        notify_terminals=self.ssh.notify_terminals,
                                        interval_s=self.ctx.metrics_sample_s,
                                        post_every_s=self.ctx.metrics_post_s)
        self.watchdog.extend_until(self.known_extend)

        async def run() -> None:
            self.stop_reason = await self.watchdog.run()
            self.stop_event.set()

        self.background.append(asyncio.create_task(run()))

    async def _report_idle(self, state) -> None:
        status = SessionStatus.idle if state.show_idle else SessionStatus.active
        await self.report(status, idle_seconds=state.idle_seconds, kept_alive_by=state.kept_alive_by)

    async def watch(self) -> None:
        """Wait for a stop request (long poll), the idle limit, the SSH server dying, or a signal."""
        while not self.stop_event.is_set():
            if self.ssh is not None and not self.ssh.alive():
                self.final, self.error = SessionStatus.failed, "the SSH server exited unexpectedly"
                return
            try:
                poll = asyncio.ensure_future(self.client.watch(self.id, wait=20, known_extend=self.known_extend,
                                                               known_sync=self.known_sync))
                stopped = asyncio.ensure_future(self.stop_event.wait())
                await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not poll.done():
                    poll.cancel()
                    return
                control = poll.result()
                if control.stop:
                    return
                if self.watchdog is not None:
                    self.watchdog.extend_until(control.extend_until)
                if control.sync_requested_at != self.known_sync:
                    if self.known_sync is not None or control.sync_requested_at is not None:
                        self.background.append(asyncio.create_task(self.workspace_sync.sync("on-demand")))
                    self.known_sync = control.sync_requested_at
                self.known_extend = control.extend_until
            except Unauthorized:  # the session ended on the server: its token is dead
                return
            except BerthError as exc:  # server away: keep serving, try again
                log.warning("watch failed: %s", exc.message)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 2.0)

    async def final_sync(self) -> None:
        """Store the workspace before anything is killed; a failure fails the session (the old snapshot stays)."""
        for task in self.background:
            task.cancel()
        if self.watchdog is not None:
            with contextlib.suppress(Exception):
                await self.watchdog.flush()  # the last metrics
        if self.workspace_sync is None:
            return
        if not await self.workspace_sync.sync("final"):
            self.final = SessionStatus.failed
            self.error = f"the final workspace sync failed: {self.workspace_sync.last_error}"

    async def teardown(self) -> None:
        c = self.console
        for task in self.background:
            task.cancel()
        if self.ssh is not None:
            with contextlib.suppress(Exception):
                await self.ssh.stop()
            c("ssh: server stopped")
        killed = await self.backend.teardown(self.host, exclude_pids={os.getpid()})
        if killed:
            c(f"teardown: ended {killed} leftover process(es)")
        for leftover in (self.dir / SECRETS_FILE, self.dir / "scratch", self.socket_dir()):
            _remove(leftover)
        c("teardown: session processes ended, workspace kept")

    async def run(self) -> int:
        self.console.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        try:
            try:
                await self.setup()
            except SetupFailed as exc:
                self.final, self.error = SessionStatus.failed, exc.message
                self.console.error(f"setup failed: {exc.message}")
            except Exception as exc:  # a bug: fail the session with a clear line rather than hang in 'starting'
                log.exception("setup crashed")
                self.final, self.error = SessionStatus.failed, f"setup crashed: {type(exc).__name__}: {exc}"
                self.console.error(self.error)
            if self.error is None:
                await self.watch()
            if self.error is None:
                await self.report(SessionStatus.stopping)
                await self.final_sync()
            await self.teardown()
            await self.report(self.final, error=self.console.redact(self.error) if self.error else None)
        finally:
            await self.console.close()
            await self.client.aclose()
            _remove(self.dir / PID_FILE)
        return 0


async def _all(*steps) -> None:
    """Run steps side by side; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0] from None


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_in_this_process(session_dir: str | Path) -> int:
    session_dir = Path(session_dir)
    undo_inherited_signal_ignores()  # init scripts and session shells get default dispositions, as under sshd
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (session_dir / PID_FILE).write_text(str(os.getpid()))
    return asyncio.run(Supervisor(session_dir).run())


def main() -> None:
    sys.exit(run_in_this_process(sys.argv[1]))


if __name__ == "__main__":
    main()
