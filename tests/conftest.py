"""Shared fixtures: a real server on a port, real agent processes, a logged-in CLI.

The database is SQLite by default; with BERTH_TEST_PG_URL set (scripts/test.sh does), every server gets
a fresh PostgreSQL database instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BERTH = str(Path(sys.executable).with_name("berth"))
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:16]
# Cheap argon2 in every server the tests start (ServerSettings.password_hash_*, inherited through the environment):
# the suite creates users and logs in thousands of times, ~0.4 s of CPU each at the default costs. Same code path.
os.environ.setdefault("BERTH_PASSWORD_HASH_TIME_COST", "1")
os.environ.setdefault("BERTH_PASSWORD_HASH_MEMORY_KIB", "64")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def kill_tree(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def git_daemon(src: Path, root: Path, host: str = "127.0.0.1"):
    """`src` (a git checkout) served read-only by `git daemon` on a free port of `host`; yields its git:// URL."""
    served = root / "served"
    served.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(served / "repo.git")], check=True)
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--listen={host}", f"--port={port}",
                               f"--base-path={served}", str(served)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex((host, port)) == 0:
                    break
            time.sleep(0.05)
        yield f"git://{host}:{port}/repo.git"
    finally:
        kill_tree(daemon)


class Stack:
    """A running server (+ agents) and a CLI environment logged in as admin."""

    def __init__(self, tmp: Path, database_url: str | None):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.home = tmp / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.agent_token = "ba_test_" + uuid.uuid4().hex
        self.server: subprocess.Popen | None = None
        self.agents: list[subprocess.Popen] = []
        self.token: str | None = None
        self.cleanup: list[Path] = []

    # --- processes ---------------------------------------------------------------------------
    def start_server(self) -> None:
        env = dict(os.environ, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD, BERTH_AGENT_TOKEN=self.agent_token,
                   BERTH_HEARTBEAT_TIMEOUT_S="6", BERTH_REAPER_INTERVAL_S="1", BERTH_REPLICA_URL=self.url)
        if self.database_url:
            env["BERTH_DATABASE_URL"] = self.database_url
        self.server_log = open(self.tmp / "server.log", "ab")
        self.server = subprocess.Popen([BERTH, "server", "--data-dir", str(self.tmp / "data"), "--port", str(self.port)],
                                       env=env, stdout=self.server_log, stderr=self.server_log)
        wait_http(self.url + "/healthz", self.server)

    def start_agent(self, *, queue: str = "default", name: str = "agent", user: str | None = None,
                    data_dir: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        if data_dir is None and user:  # another user cannot reach pytest's private temp dirs
            data_dir = Path(tempfile.mkdtemp(prefix=f"berth-agent-{name}-", dir="/var/tmp"))
            self.cleanup.append(data_dir)
        data_dir = data_dir or self.tmp / f"agent-{name}"
        env = dict(os.environ, BERTH_AGENT_TOKEN=self.agent_token, BERTH_AGENT_HEARTBEAT_S="1", **(env or {}))
        cmd = [BERTH, "agent", "--server", self.url, "--queue", queue, "--data-dir", str(data_dir), "--name", name]
        if user:
            data_dir.mkdir(parents=True, exist_ok=True)
            pw = pwd.getpwnam(user)
            os.chown(data_dir, pw.pw_uid, pw.pw_gid)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            cmd = ["runuser", "-u", user, "--", *cmd]
        log = open(self.tmp / f"agent-{name}.log", "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd="/")
        self.agents.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # registered once the worker shows online
            workers = self.api("GET", "/api/v1/workers")
            if any(w["name"] == name and w["status"] == "online" for w in workers):
                return proc
            if proc.poll() is not None:
                raise RuntimeError((self.tmp / f"agent-{name}.log").read_text()[-2000:])
            time.sleep(0.1)
        raise TimeoutError("agent did not register")

    def login(self) -> None:
        r = httpx.post(self.url + "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        self.token = r.json()["token"]
        self.cli("login", "--server", self.url, "--username", "admin", "--password", ADMIN_PASSWORD)

    def stop(self) -> None:
        try:  # the agents' supervisors end their sessions, tearing down what they made; with no agent nothing runs
            for view in self.api("GET", "/api/v1/sessions", params={"status": ["queued", "starting", "active", "idle", "stopping"]}) if self.agents else []:
                self.api("POST", f"/api/v1/sessions/{view['id']}/stop")
            deadline = time.monotonic() + 20
            while self.agents and time.monotonic() < deadline and self.api("GET", "/api/v1/sessions", params={"status": ["starting", "active", "idle", "stopping"]}):
                time.sleep(0.2)
        except Exception:
            pass
        for proc in self.agents:
            kill_tree(proc)
        if self.server:
            kill_tree(self.server)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)

    # --- helpers -------------------------------------------------------------------------------
    def sql(self, query: str) -> list[tuple]:
        """Rows straight from the server's database (SQLite file or PostgreSQL), bypassing the API."""
        if self.database_url:
            import psycopg
            from pg import to_libpq_url

            with psycopg.connect(to_libpq_url(self.database_url)) as conn:
                return conn.execute(query).fetchall()
        import sqlite3

        conn = sqlite3.connect(self.tmp / "data" / "berth.db")
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def env(self, **extra) -> dict:
        env = dict(os.environ, HOME=str(self.home), BERTH_HOME=str(self.home / ".berth"))
        env.pop("BERTH_SERVER", None)
        env.pop("BERTH_TOKEN", None)
        env.update(extra)
        return env

    def cli_cmd(self, *args: str) -> list[str]:
        return [BERTH, *args]

    def cli(self, *args: str, check: bool = True, timeout: float = 120, env: dict | None = None, input: str | None = None):
        proc = subprocess.run([BERTH, *args], env=env or self.env(), capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def cli_json(self, *args: str, **kw):
        proc = self.cli(*args, "--json", **kw)
        return json.loads(proc.stdout)

    def api(self, method: str, path: str, token: str | None = None, **kw):
        r = httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=60, **kw)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {r.status_code} {r.text}")
        return r.json() if r.content else None

    def wait_status(self, session_id: str, *statuses: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        view = None
        while time.monotonic() < deadline:
            view = self.api("GET", f"/api/v1/sessions/{session_id}")
            if view["status"] in statuses:
                return view
            time.sleep(0.1)
        raise AssertionError(f"session {session_id} is {view and view['status']}, not {statuses}; events: {self.events(session_id)}")

    def events(self, session_id: str) -> list[str]:
        return [e["message"] for e in self.api("GET", f"/api/v1/sessions/{session_id}/events")]


@pytest.fixture(scope="session")
def pg_admin_url():
    return os.environ.get("BERTH_TEST_PG_URL")


def make_database_url(pg_admin_url: str | None) -> str | None:
    if not pg_admin_url:
        return None
    from pg import create_database

    return create_database(pg_admin_url)


def _stack(tmp_path_factory, pg_admin_url, *, with_agent: bool, agent_env: dict[str, str] | None = None):
    s = Stack(tmp_path_factory.mktemp("stack" if with_agent else "srv"), make_database_url(pg_admin_url))
    try:
        s.start_server()
        s.login()
        if with_agent:
            s.start_agent(env=agent_env)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_admin_url):
    """Server + one local agent on queue 'default', logged in as admin. Shared by a test module."""
    yield from _stack(tmp_path_factory, pg_admin_url, with_agent=True)


@pytest.fixture(scope="module")
def server_only(tmp_path_factory, pg_admin_url):
    """A server with no agent (sessions stay queued)."""
    yield from _stack(tmp_path_factory, pg_admin_url, with_agent=False)


@pytest.fixture(scope="session")
def nonroot_user():
    """A throwaway unprivileged system user for non-root agent tests."""
    name = "berthtest" + uuid.uuid4().hex[:6]
    home = Path("/var/tmp") / name
    subprocess.run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        yield name
    finally:
        for proc in psutil.process_iter(["uids"]):
            try:
                if proc.info["uids"] and proc.info["uids"].real == pwd.getpwnam(name).pw_uid:
                    proc.kill()
            except (psutil.Error, KeyError):
                pass
        subprocess.run(["userdel", "-r", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def session_processes(session_id: str) -> list[psutil.Process]:
    """Every process that belongs to a session (its env marker, its per-session user, or its SSH server)."""
    found = []
    user = f"berth-{session_id[:12]}"
    for proc in psutil.process_iter(["username", "cmdline"]):
        try:
            started_from_session_dir = any(f"/sessions/{session_id}/" in part for part in proc.info["cmdline"] or [])
            if proc.info["username"] == user or started_from_session_dir or proc.environ().get("BERTH_SESSION_ID") == session_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


# Worker-side modules: what they test runs in the agent, the supervisor and the session (servers, desktops,
# containers, the session's environment and input), and the server's database only records it. They run once, on
# SQLite; the PostgreSQL run (scripts/test.sh) deselects the "worker" marker, as it does "browser". Everything that
# reads or writes through the server's services (API, pages, gateway authorization, claims, transitions) runs on both.
WORKER_SIDE_MODULES = {
    "test_as_session", "test_environment", "test_session_processes", "test_ssh_servers", "test_ssh_algorithms", "test_setup_steps",
    "test_input_detection", "test_remote_desktop_worker", "test_container_backend", "test_container_ssh",
    "test_container_e2e", "test_ssh_tunnel", "test_ssh_session", "test_privilege_boundaries",
    "test_container_desktop", "test_container_metrics", "test_container_docker",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in WORKER_SIDE_MODULES:
            item.add_marker(pytest.mark.worker)
