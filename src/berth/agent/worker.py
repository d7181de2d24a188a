"""The agent: registers this machine as a worker, heartbeats, claims sessions, starts their supervisors.

Supervisors run detached (their own process session), so restarting the agent leaves sessions running;
the restarted agent re-adopts them from the session directories and reports any whose supervisor died.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from berth.agent.tunnel import AgentTunnel
from berth.client import BerthClient
from berth.errors import BerthError, ServerUnavailable, Unauthorized
from berth.private_files import ensure_private_dir, open_private, tighten
from berth.schemas import Assignment, SessionStatus, SupervisorStatus, WorkerRegister
from berth.settings import AgentSettings

from .backends import get_backend
from .context import SupervisorContext

from .session_files import ASSIGNMENT_FILE, PID_FILE, SECRETS_FILE, write_session_files

log = logging.getLogger("berth.agent")
IDENTITY_FILE = "worker.json"


def gpu_inventory() -> list[dict]:
    """GPUs through NVML when there are any; an empty list otherwise."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)})
        return out
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def supervisor_alive(session_dir: Path) -> bool:
    try:
        pid = int((session_dir / PID_FILE).read_text())
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())  # a supervisor forked by the zygote keeps the zygote's command line
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and ("berth.agent.supervisor" in cmdline
                                                                                 or "berth.agent.zygote" in cmdline)
    except (FileNotFoundError, ValueError, psutil.Error):
        return False


class Agent:
    def __init__(self, settings: AgentSettings):
        self.settings = settings
        self.sessions_dir = settings.data_dir / "sessions"
        self.worker_id: str | None = None
        self.client: BerthClient | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = asyncio.Event()
        self.zygote: subprocess.Popen | None = None
        self.worker_token = ""
        self.claimed: set[str] = set()   # sessions this run of the agent received
        self._missing: set[str] = set()  # listed by the last heartbeat, never received
        self.tunnel: AgentTunnel | None = None

    # --- identity ---------------------------------------------------------------------------
    def _load_identity(self) -> dict:
        path = self.settings.data_dir / IDENTITY_FILE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_identity(self, worker_id: str, token: str) -> None:
        path = self.settings.data_dir / IDENTITY_FILE
        ensure_private_dir(path.parent)
        with open_private(path, "w") as f:  # the worker's token
            json.dump({"worker_id": worker_id, "token": token, "server": self.settings.server}, f)

    def _private_data_dir(self) -> None:
        """The data dir and sessions dir 0700 (they hold the worker's token, session passwords and tokens);
        what an older berth or a loose umask left readable by others is tightened, in one log line."""
        data_dir = ensure_private_dir(self.settings.data_dir)
        ensure_private_dir(self.sessions_dir)
        paths = [data_dir, data_dir / IDENTITY_FILE, self.sessions_dir]
        for session_dir in filter(Path.is_dir, self.sessions_dir.iterdir()):
            # a 0700 session dir is enough to hide what the supervisor keeps there; its secrets go 0600 too
            paths += [session_dir, *(session_dir / name for name in (ASSIGNMENT_FILE, SECRETS_FILE, "supervisor.log"))]
        changed = tighten(paths)
        if changed:
            log.warning("data dir %s was readable by other users: removed their access from %d path(s) "
                        "(worker identity, session directories)", data_dir, changed)

    async def register(self) -> None:
        s = self.settings
        info = WorkerRegister(
            name=s.name or socket.gethostname(), hostname=socket.getfqdn(), queues=s.queues, cpus=os.cpu_count() or 1,
            memory_bytes=psutil.virtual_memory().total, gpus=gpu_inventory(), run_as=getpass.getuser(),
            is_root=os.geteuid() == 0, backends=[s.backend],  # the server gives it only sessions this backend runs
        )
        saved = self._load_identity()
        attempts = []
        if saved.get("token") and saved.get("server") == s.server:
            attempts.append((saved["token"], saved["worker_id"]))
        if s.token:
            attempts.append((s.token, saved.get("worker_id") if saved.get("server") == s.server else None))
        if not attempts:
            raise Unauthorized("the agent needs a registration token: --token or BERTH_AGENT_TOKEN")
        last: BerthError | None = None
        for token, worker_id in attempts:
            async with BerthClient(s.server, token) as client:
                try:
                    registered = await client.register_worker(info.model_copy(update={"worker_id": worker_id}))
                    break
                except Unauthorized as exc:
                    last = exc
        else:
            raise last or Unauthorized("registration refused")
        self.worker_id = registered.worker_id
        self._save_identity(registered.worker_id, registered.token)
        self.client = BerthClient(s.server, registered.token)
        self.worker_token = registered.token
        log.info("registered as worker %s (%s) on queues %s", info.name, self.worker_id, ", ".join(s.queues))

    # --- sessions ---------------------------------------------------------------------------
    def start_supervisor(self, assignment: Assignment) -> None:
        session_dir = self.sessions_dir / assignment.session_id
        write_session_files(session_dir, assignment, SupervisorContext.of(self.settings))
        if self._fork_supervisor(session_dir):
            log.info("session %s: supervisor forked by the zygote", assignment.session_id)
            return
        log_file = open_private(session_dir / "supervisor.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "berth.agent.supervisor", str(session_dir)], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=log_file, start_new_session=True, close_fds=True, cwd="/")
        log_file.close()
        self.children[assignment.session_id] = proc
        log.info("session %s: supervisor started (pid %d)", assignment.session_id, proc.pid)

    def _start_zygote(self) -> None:
        try:
            self.zygote = subprocess.Popen([sys.executable, "-m", "berth.agent.zygote"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=None, start_new_session=True, cwd="/", text=True)
            if self.zygote.stdout.readline().strip() != "ready":
                raise OSError("zygote did not start")
        except OSError as exc:
            log.warning("no supervisor zygote (%s); supervisors start as new processes", exc)
            self.zygote = None

    def _fork_supervisor(self, session_dir: Path) -> bool:
        """Hand the session to the zygote; False if it is gone (the caller starts a process instead)."""
        if self.zygote is None or self.zygote.poll() is not None:
            return False
        try:
            self.zygote.stdin.write(f"{session_dir}\n")
            self.zygote.stdin.flush()
            return self.zygote.stdout.readline().startswith("started")
        except (OSError, ValueError):
            return False

    async def reconcile(self, expected: list[str]) -> None:
        """Sessions the server thinks run here but whose supervisor is gone are failed with that reason; sessions
        claimed for this worker that never reached it (a previous run of the agent died with the claim's answer in
        flight) are abandoned: failed, saying so. A claim of this run may still be on its way when a heartbeat
        lists it, so a session must be missing at two heartbeats in a row."""
        never_received = [sid for sid in expected if sid not in self.claimed and not (self.sessions_dir / sid).exists()]
        abandon = [sid for sid in never_received if sid in self._missing]
        self._missing = set(never_received) - set(abandon)
        if abandon:
            with contextlib.suppress(BerthError):
                await self.client.abandon(self.worker_id, abandon)
        for sid in expected:
            session_dir = self.sessions_dir / sid
            proc = self.children.get(sid)
            if proc is not None and proc.poll() is None:
                continue
            if supervisor_alive(session_dir) or not (session_dir / PID_FILE).exists() and _recent(session_dir):
                continue  # alive, or forked a moment ago and not yet written its pid file
            try:
                data = json.loads((session_dir / ASSIGNMENT_FILE).read_text())
                token = data["assignment"]["session_token"]
            except (FileNotFoundError, ValueError, KeyError):
                continue
            # Tear down first, report after: as with a normal stop, "failed" means nothing of it is left.
            backend = get_backend(self.settings.backend)
            killed = await backend.clean_up_orphan(sid, session_dir, runtime_dir=self.settings.runtime_dir)
            async with BerthClient(self.settings.server, token) as client:
                with contextlib.suppress(BerthError):
                    await client.report(sid, SupervisorStatus(status=SessionStatus.failed,
                                                              error="the session's supervisor exited unexpectedly"))
            log.warning("session %s: supervisor died; ended %d leftover process(es)", sid, killed)
            self.children.pop(sid, None)
        for sid, proc in list(self.children.items()):
            if proc.poll() is not None:
                self.children.pop(sid)

    async def heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                expected = await self.client.heartbeat(self.worker_id)
                await self.reconcile(expected)
            except BerthError as exc:
                log.warning("heartbeat failed: %s", exc.message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.heartbeat_s)

    async def host_metrics_loop(self, interval_s: float = 5.0, post_every_s: float = 30.0) -> None:
        """Worker-level metrics (whole machine), posted in batches; kept while the server is away."""
        from .monitor import HostSampler

        sampler = HostSampler()
        batch, last_post = [], asyncio.get_running_loop().time()
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval_s)
            try:
                batch.append(await asyncio.to_thread(sampler.sample))
            except Exception:  # a sampling hiccup must not stop the agent
                log.exception("host sampling failed")
            if asyncio.get_running_loop().time() - last_post >= post_every_s and batch:
                try:
                    await self.client.post_worker_metrics(self.worker_id, batch[-1000:])
                    batch, last_post = [], asyncio.get_running_loop().time()
                except BerthError as exc:
                    log.warning("posting host metrics failed: %s", exc.message)
                    batch = batch[-720:]

    async def claim_loop(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                assignment = await self.client.claim(self.worker_id, wait=20)
                backoff = 0.5
            except ServerUnavailable as exc:
                log.warning("%s", exc.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            except BerthError as exc:
                log.error("claim failed: %s", exc.message)
                await asyncio.sleep(2)
                continue
            if assignment is not None:
                self.claimed.add(assignment.session_id)
                self.start_supervisor(assignment)

    async def run(self) -> None:
        self._private_data_dir()
        await self.register()
        self._start_zygote()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        tasks = [asyncio.create_task(self.heartbeat_loop()), asyncio.create_task(self.claim_loop()),
                 asyncio.create_task(self.host_metrics_loop(self.settings.host_metrics_sample_s, self.settings.host_metrics_post_s))]
        if self.settings.tunnel:
            self.tunnel = AgentTunnel(self.settings.server, self.worker_id, lambda: self.worker_token, self.sessions_dir,
                                      backoff_max_s=self.settings.tunnel_backoff_max_s)
            tasks.append(asyncio.create_task(self.tunnel.run(self.stopping)))
        await self.stopping.wait()
        log.info("agent stopping; running sessions keep running and are re-adopted at the next start")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.zygote is not None:
            self.zygote.stdin.close()  # EOF ends the zygote; supervisors it started are not its children
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.zygote.wait(5)
        await self.client.aclose()


def _recent(session_dir: Path, seconds: float = 30.0) -> bool:
    import time

    try:
        return time.time() - (session_dir / ASSIGNMENT_FILE).stat().st_mtime < seconds
    except FileNotFoundError:
        return False


async def run_agent(settings: AgentSettings) -> None:
    await Agent(settings).run()
