"""`berth up`, `berth server`, `berth agent`: the long-running processes."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .common import err, escape, guard, run_loop


class _RefusedUpgradeNoise(logging.Filter):
    """uvicorn's websockets-sansio protocol logs an error after every WebSocket upgrade the gateway refuses with a
    status (401, 404, ...), though the client got its answer (uvicorn PR #3138): that line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def _serve(settings) -> None:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_RefusedUpgradeNoise())

    from berth.server.app import create_app

    app = create_app(settings)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            app.state.notifier.close()  # long polls answer at once instead of holding the shutdown
            await super().shutdown(sockets)

    # X-Forwarded-For is believed only from BERTH_TRUSTED_PROXIES (uvicorn would trust 127.0.0.1 by default):
    # the client address decides login throttling.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=3,
                            proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies)
    server = Server(config)

    def _term_as_interrupt(signum, frame):  # uvicorn re-raises SIGTERM after its clean shutdown: end like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term_as_interrupt)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown was clean
        pass
    if not server.started:
        raise typer.Exit(1)


def _private_umask() -> int:
    """Everything the server process creates is for its own eyes (database and its -wal/-shm/-journal,
    keys, snapshot store, logs): umask 077 as a second line behind the explicit modes of those writers.
    Returns the previous umask, which `berth up` gives back to its agent (session files are not private)."""
    return os.umask(0o077)


def _die_with_parent() -> None:
    """In the agent child of `berth up`: get SIGTERM when `berth up` dies, however it dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def server(
    data_dir: Optional[Path] = typer.Option(None, help="Data directory (default ~/.berth)"),
    host: Optional[str] = typer.Option(None, help="Listen address (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8470)"),
) -> None:
    """Run the control-plane server (API, dashboard, gateway)."""
    from berth.settings import ServerSettings

    _private_umask()
    overrides = {k: v for k, v in {"data_dir": data_dir, "host": host, "port": port}.items() if v is not None}
    settings = ServerSettings(**overrides)
    database = escape(_safe_url(settings.resolved_database_url()))
    err.print(f"berth server on http://{settings.host}:{settings.port} (database: {database})")
    _serve(settings)


def _safe_url(url: str) -> str:
    from berth.redaction import redact

    return redact(url)  # the database URL without its credentials


def agent(
    server_url: str = typer.Option(..., "--server", envvar="BERTH_AGENT_SERVER", help="Server URL"),
    queue: list[str] = typer.Option(["default"], "--queue", "-q", help="Queue to serve (repeatable)"),
    backend: Optional[str] = typer.Option(None, help="Session backend: process | container (default: BERTH_AGENT_BACKEND, "
                                                    "else process); only a container agent takes sessions that name an image"),
    token: Optional[str] = typer.Option(None, envvar="BERTH_AGENT_TOKEN", help="Registration token (agent or admin token)"),
    data_dir: Optional[Path] = typer.Option(None, help="Agent state directory (default ~/.berth/agent)"),
    name: Optional[str] = typer.Option(None, help="Worker name (default: hostname)"),
) -> None:
    """Run an agent: serve sessions from queues on this machine."""
    import logging

    from berth.agent.backends import get_backend
    from berth.agent.worker import run_agent
    from berth.settings import AgentSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    fields = {"server": server_url, "queues": queue, "backend": backend, "token": token, "data_dir": data_dir, "name": name}
    settings = AgentSettings(**{k: v for k, v in fields.items() if v is not None})
    guard(lambda: get_backend(settings.backend))
    guard(lambda: run_loop(run_agent(settings)))


def up(
    data_dir: Path = typer.Option(Path("~/.berth"), help="Data directory: database, store, agent state"),
    host: str = typer.Option("127.0.0.1", help="Listen address"),
    port: int = typer.Option(8470, help="Port"),
) -> None:
    """Server + one local agent on queue 'default', embedded SQLite. Ctrl-C stops both (sessions keep running)."""
    from berth.private_files import ensure_private_dir, open_private
    from berth.settings import ServerSettings

    agent_umask = _private_umask()
    data_dir = ensure_private_dir(data_dir.expanduser().resolve())  # the server tightens an existing one
    agent_token = "ba_" + secrets.token_urlsafe(32)  # lives only in this process and its agent's environment
    settings = ServerSettings(data_dir=data_dir, host=host, port=port, agent_token=agent_token)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    env = dict(os.environ, BERTH_AGENT_TOKEN=agent_token)
    agent_cmd = [sys.executable, "-m", "berth.cli.main", "agent", "--server", url, "--queue", "default",
                 "--data-dir", str(data_dir / "agent")]
    agent_log = open_private(data_dir / "agent.log", "ab")
    agent_proc: subprocess.Popen | None = None

    def in_agent() -> None:  # runs in the agent child, before exec
        _die_with_parent()
        os.umask(agent_umask)  # the agent makes its own files private itself; the session files it writes are not

    def start_agent() -> None:
        nonlocal agent_proc
        agent_proc = subprocess.Popen(agent_cmd, env=env, stdin=subprocess.DEVNULL, stdout=agent_log, stderr=agent_log,
                                      preexec_fn=in_agent)

    import threading

    def launch_agent_when_ready() -> None:
        import httpx

        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    start_agent()
                    err.print(f"berth is up: dashboard {url}/  (agent log: {escape(str(data_dir / 'agent.log'))})")
                    agent_proc.wait()  # PDEATHSIG follows the *thread* that started the child: it must outlive the agent
                    return
            time.sleep(0.1)

    threading.Thread(target=launch_agent_when_ready, daemon=True).start()
    try:
        _serve(settings)
    finally:
        if agent_proc is not None and agent_proc.poll() is None:
            agent_proc.send_signal(signal.SIGTERM)
            try:
                agent_proc.wait(5)
            except subprocess.TimeoutExpired:
                agent_proc.kill()
        agent_log.close()
        err.print("berth stopped (server and agent); running sessions keep running and are re-adopted by the next `berth up`")
