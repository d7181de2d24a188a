"""One supervisor process per session: the same lifecycle for every app and backend.

Started detached by the agent (``python -m berth.agent.supervisor SESSION_DIR``) so that an agent restart
does not touch running sessions. It talks to the server with the session's own token.

Lifecycle: backend prepares the session's identity and home → restore the workspace → the app prepares its
environment and starts its servers (``berth.agent.apps``) → report active with the app's endpoints → watch
(stop request, idle limit, the app going down, a signal) → final workspace sync → app stop → backend teardown
→ report stopped. Everything in the home is done as the session user (``backend.act_as_session``,
``backend.run_in_session``). Any failed step fails the session with the step's own message and tears down
what was made. A stop request during setup cuts it short (the session ends stopped); a setup still running
after ``setup_timeout_s`` fails the session; both tear down what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from berth.agent.apps import AgentApp, SessionRuntime, get_agent_app
from berth.agent.apps.base import pick_app_port
from berth.agent.backends import SessionBackend, SessionHost, get_backend
from berth.agent.console import Console
from berth.agent.session_services import clear_services, write_services
from berth.agent.session_files import PID_FILE, SECRETS_FILE, read_session_files
from berth.agent.signal_defaults import undo_inherited_signal_ignores
from berth.agent.sync import WorkspaceSync
from berth.client import BerthClient
from berth.errors import BerthError, Conflict, SetupFailed, Unauthorized
from berth.schemas import Endpoints, SessionStatus, SupervisorStatus

log = logging.getLogger("berth.supervisor")


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


class Supervisor:
    """`app_class` and `backend` replace the ones the assignment names (tests' failure fixtures)."""

    def __init__(self, session_dir: Path, *, app_class: type[AgentApp] | None = None,
                 backend: SessionBackend | None = None):
        self.dir = session_dir
        files = read_session_files(session_dir)
        self.ctx, self.assignment, self.password = files.context, files.assignment, files.password
        self.id = self.assignment.session_id
        self.client = BerthClient(self.ctx.server, self.assignment.session_token)
        self.console = Console(self.client, self.id, secrets=files.secrets)
        self.backend = backend or get_backend(self.ctx.backend)(
            self.id, session_dir, homes_dir=self.ctx.homes_dir, runtime_dir=self.ctx.runtime_dir, password=self.password)
        self.app_class = app_class
        self.app: AgentApp | None = None
        self.host: SessionHost | None = None
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

    async def setup(self) -> Endpoints:
        """Backend, restore, app: everything before the session serves; returns the app's endpoints."""
        c = self.console
        t0 = time.monotonic()
        app_class = self.app_class or get_agent_app(self.assignment.app)  # an app this worker cannot run fails here
        c(f"setup: {self.backend.describe()}")
        self.host = await self.backend.prepare()
        c(f"setup: session user {self.host.run_as.user!r}, home {self.host.home}")
        from berth.agent.monitor import SessionSampler

        self.sampler = SessionSampler.for_scope(self.backend.process_scope(), net_counters=self.backend.net_counters)
        # Everything done in the home runs as the session user; the helpers doing it are not the user's load.
        act = functools.partial(self.backend.act_as_session, on_start=self.sampler.ignore, on_exit=self.sampler.unignore)
        self.app = app_class(SessionRuntime(
            assignment=self.assignment, context=self.ctx, backend=self.backend, host=self.host, session_dir=self.dir,
            password=self.password, advertise_host=advertise_host(self.ctx.server, self.ctx.advertise_host),
            emit=c, act=act, note_input=self.sampler.note_input, app_port=pick_app_port()))
        workspace = self.app.workspace()
        if workspace is not None:
            self.workspace_sync = WorkspaceSync(
                self.client, self.id, workspace.path, self.dir / "sync", interval_s=workspace.sync_interval_s,
                excludes=workspace.excludes, max_bytes=workspace.max_bytes, emit=c, act=act)
            if self.assignment.restored_from:  # before the app: its steps and servers see the restored files
                await self.workspace_sync.restore(self.assignment.restored_from)
        await self.app.prepare()
        _remove(self.dir / SECRETS_FILE)  # launch credentials are only for the app's preparation
        endpoints = await self.app.start()
        c(f"setup: ready in {time.monotonic() - t0:.2f} s")
        return endpoints

    async def setup_or_stop(self) -> Endpoints | None:
        """Setup, cut short by a stop request (long poll), a signal, or the time limit; None when stopped.
        What setup made is left for teardown, as after a failed step."""
        setup = asyncio.ensure_future(self.setup())
        stop = asyncio.ensure_future(self._watch_server(after_s=1.0))
        try:
            await asyncio.wait({setup, stop}, timeout=self.ctx.setup_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped = stop.done()
            stop.cancel()
            if not setup.done():
                setup.cancel()
                await asyncio.wait({setup})  # its steps end their processes as they are cancelled
        if not setup.cancelled():
            return setup.result()  # a step's failure is raised as itself
        if stopped:
            stop.result()  # the watch itself crashing is a bug: raised
            self.console("setup: stopped before the session was ready")
            return None
        raise SetupFailed(f"setup did not finish within {self.ctx.setup_timeout_s:g} s")

    async def go_live(self, endpoints: Endpoints) -> None:
        """Publish the app's services to the tunnel, report its endpoints, then start syncing and watching."""
        write_services(self.dir, self.app.services())
        await self.report(SessionStatus.active, endpoints=endpoints)
        self.start_watchdog()
        if self.workspace_sync is not None:
            self.background.append(asyncio.create_task(self.workspace_sync.periodic()))
            workspace = self.app.workspace()
            if workspace.helper_dir is not None:
                self.sync_server = await self.workspace_sync.serve_socket(
                    self.host.socket_dir, workspace.helper_dir, self.host.socket_gid)

    def start_watchdog(self) -> None:
        """Metrics and idle rules (berth.agent.watchdog); at the idle limit it asks for the stop."""
        from berth.agent.idle import IdleTracker
        from berth.agent.watchdog import SessionWatchdog

        self.sampler.set_input_ports(self.app.activity_ports())
        self.sampler.watch_input_stamp(self.dir)  # a viewer's input through the tunnel (any app)
        tracker = IdleTracker.from_config(self.app.config, input_window_s=self.ctx.idle_input_window_s,
                                          warn_before_s=self.ctx.idle_warn_before_s,
                                          # short limits must still show "idle" before they end
                                          idle_status_after_s=min(60.0, self.app.config.max_idle_hours * 360))
        self.watchdog = SessionWatchdog(self.client, self.id, self.sampler, tracker,
                                        console=self.console, report=self._report_idle,
                                        notify_terminals=self.app.notify_users,
                                        interval_s=self.ctx.metrics_sample_s,
                                        post_every_s=self.ctx.metrics_post_s,
                                        report_every_s=self.ctx.status_report_s)
        self.watchdog.extend_until(self.known_extend)

        async def run() -> None:
            self.stop_reason = await self.watchdog.run()
            self.stop_event.set()

        self.background.append(asyncio.create_task(run()))

    async def _report_idle(self, state) -> None:
        status = SessionStatus.idle if state.show_idle else SessionStatus.active
        await self.report(status, idle_seconds=state.idle_seconds, kept_alive_by=state.kept_alive_by)

    async def watch(self) -> None:
        """Wait for a stop request (long poll), the idle limit, the app going down, or a signal."""
        self.background.append(asyncio.create_task(self._watch_app()))
        await self._watch_server()

    async def _watch_server(self, after_s: float = 0.0) -> None:
        """Long-poll the server until it asks for the stop (or has ended the session), or the stop event is set;
        meanwhile apply idle extensions and sync requests. Also runs during setup, so a stop cuts setup short:
        there it starts `after_s` late (a stop asked for meanwhile is still seen), leaving a quick setup alone."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), after_s)
        while not self.stop_event.is_set():
            try:
                poll = asyncio.ensure_future(self.client.watch(self.id, wait=20, known_extend=self.known_extend,
                                                               known_sync=self.known_sync))
                stopped = asyncio.ensure_future(self.stop_event.wait())
                try:
                    await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when cancelled (setup finished first): no long poll left behind
                    stopped.cancel()
                    answered = poll.done()
                    if not answered:
                        poll.cancel()
                if not answered:  # the stop event
                    return
                control = poll.result()
                if control.stop:
                    return
                if self.watchdog is not None:
                    self.watchdog.extend_until(control.extend_until)
                if control.sync_requested_at != self.known_sync:
                    if self.workspace_sync is not None and (self.known_sync is not None or control.sync_requested_at is not None):
                        self.background.append(asyncio.create_task(self.workspace_sync.sync("on-demand")))
                    self.known_sync = control.sync_requested_at
                self.known_extend = control.extend_until
            except Unauthorized:  # the session ended on the server: its token is dead
                return
            except BerthError as exc:  # server away: keep serving, try again
                log.warning("watch failed: %s", exc.message)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 2.0)

    async def _watch_app(self, every_s: float = 1.0) -> None:
        """An app (or the backend's environment: a dead container) that stops serving fails the session with its
        reason, within a second. The backend first: its reason is the cause when both go down."""
        while not self.stop_event.is_set():
            down = await self.backend.down_reason()
            if down is None and self.app is not None:
                down = self.app.down_reason()
            if down is not None:
                self.final, self.error = SessionStatus.failed, down
                self.stop_event.set()
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), every_s)

    async def final_sync(self) -> None:
        """Store the workspace before anything is killed; a failure fails the session (the old snapshot stays)."""
        for task in self.background:
            task.cancel()
        if self.watchdog is not None:
            with contextlib.suppress(Exception):
                await self.watchdog.flush()  # the last metrics
        if self.workspace_sync is None:
            return
        if not await self.workspace_sync.sync("final") and self.error is None:
            self.final = SessionStatus.failed
            self.error = f"the final workspace sync failed: {self.workspace_sync.last_error}"

    async def teardown(self) -> None:
        c = self.console
        for task in self.background:
            task.cancel()
        clear_services(self.dir)  # the tunnel stops opening streams to it before its servers go
        if self.app is not None:
            try:
                await self.app.stop()
            except Exception as exc:  # the backend's teardown still ends whatever the app left running
                log.exception("app stop failed")
                c(f"teardown: stopping the app failed: {type(exc).__name__}: {exc}")
        try:
            killed = await self.backend.teardown(self.host, exclude_pids={os.getpid()})
        except Exception as exc:  # processes may be left: the session fails saying so, and still reports
            log.exception("backend teardown failed")
            message = f"teardown failed: {type(exc).__name__}: {exc}"
            c(message)
            if self.error is None:
                self.final, self.error = SessionStatus.failed, message
        else:
            if killed:
                c(f"teardown: ended {killed} leftover process(es)")
            c("teardown: session processes ended, workspace kept")
        for leftover in (self.dir / SECRETS_FILE, self.dir / "scratch", *([self.host.socket_dir] if self.host else [])):
            _remove(leftover)

    async def run(self) -> int:
        self.console.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        ready = False
        try:
            try:
                endpoints = await self.setup_or_stop()
                if endpoints is not None:
                    await self.go_live(endpoints)
                    ready = True
            except SetupFailed as exc:
                self.final, self.error = SessionStatus.failed, exc.message
                self.console.error(f"setup failed: {exc.message}")
            except Exception as exc:  # a bug: fail the session with a clear line rather than hang in 'starting'
                log.exception("setup crashed")
                self.final, self.error = SessionStatus.failed, f"setup crashed: {type(exc).__name__}: {exc}"
                self.console.error(self.error)
            if ready:  # serve until told to stop; the workspace is stored even after an app crash
                await self.watch()
                await self.report(SessionStatus.stopping)
                await self.final_sync()
            elif self.error is None:  # stopped during setup: nothing the user made to store
                await self.report(SessionStatus.stopping)
            await self.teardown()
            await self.report(self.final, error=self.console.redact(self.error) if self.error else None)
        finally:
            await self.console.close()
            await self.client.aclose()
            _remove(self.dir / PID_FILE)
        return 0


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
