"""Private data dir (issue #7, item 5).

Seen on main: berth.db (-wal, -shm), secret.key and the snapshot store's packs and manifests were 0644 in
0755 folders, so any Unix user on the machine (every session runs as its own user on the worker) could
read every user's password hash and every project's workspace contents. The attacker here is a second,
unprivileged system user; the temp dirs are world-traversable (pytest's own are 0700) so that only the
modes berth sets keep them out. Servers run under `umask 000` and `umask 022`, through a shell wrapper.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from berth.client import BerthClient
from berth.workspace.sync import snapshot_to_server
from conftest import ADMIN_PASSWORD, BERTH, Stack, free_port, kill_tree, make_database_url, wait_http

SECRET_CONTENT = "workspace-secret-" + uuid.uuid4().hex
TIGHTENED = "was readable by other users"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def loose_paths(root: Path) -> list[str]:
    """Everything under root (root included) that group or others may access."""
    found = [] if not mode(root) & 0o077 else [f"{root} {oct(mode(root))}"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            p = Path(dirpath, name)
            if not p.is_symlink() and mode(p) & 0o077:
                found.append(f"{p.relative_to(root)} {oct(mode(p))}")
    return found


def loosen(root: Path) -> None:
    """What main left behind: 0755 directories, 0644 files."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            Path(dirpath, name).chmod(0o755)
        for name in filenames:
            Path(dirpath, name).chmod(0o644)


def read_as(user: str, path: Path) -> subprocess.CompletedProcess:
    """`cat path` as `user`; stdout as bytes (packs are binary), stderr as text."""
    proc = subprocess.run(["runuser", "-u", user, "--", "cat", str(path)], capture_output=True, timeout=30)
    proc.stderr = proc.stderr.decode(errors="replace")
    return proc


@pytest.fixture
def open_tmp():
    path = Path(tempfile.mkdtemp(prefix="berth-private-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UmaskStack(Stack):
    """A Stack whose server (and agents) start under a given umask."""

    def __init__(self, tmp: Path, database_url: str | None, umask: str):
        super().__init__(tmp, database_url)
        self.umask = umask
        self.data = tmp / "data"

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["sh", "-c", f'umask {self.umask}; exec "$0" "$@"', *cmd]

    def start_server(self, log_name: str = "server.log") -> None:
        env = dict(os.environ, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD, BERTH_AGENT_TOKEN=self.agent_token,
                   BERTH_HEARTBEAT_TIMEOUT_S="6", BERTH_REAPER_INTERVAL_S="1")
        if self.database_url:
            env["BERTH_DATABASE_URL"] = self.database_url
        self.server_log = open(self.tmp / log_name, "ab")
        self.server = subprocess.Popen(self.wrap([BERTH, "server", "--data-dir", str(self.data), "--port", str(self.port)]),
                                       env=env, stdout=self.server_log, stderr=self.server_log)
        wait_http(self.url + "/healthz", self.server)

    def restart_server(self, log_name: str) -> None:
        kill_tree(self.server)
        self.server_log.close()
        self.start_server(log_name)

    def start_umask_agent(self, data_dir: Path, queue: str, name: str) -> subprocess.Popen:
        env = dict(os.environ, BERTH_AGENT_TOKEN=self.agent_token, BERTH_AGENT_HEARTBEAT_S="1")
        cmd = self.wrap([BERTH, "agent", "--server", self.url, "--queue", queue, "--data-dir", str(data_dir), "--name", name])
        log_path = self.tmp / f"agent-{name}.log"
        registered = log_path.read_text().count("registered as worker") if log_path.exists() else 0
        log = open(log_path, "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd="/")
        self.agents.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # this agent registered (a restarted one's worker may still show online)
            if log_path.read_text().count("registered as worker") > registered:
                return proc
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.1)
        raise TimeoutError("agent did not register")


def make_stack(tmp: Path, pg_admin_url: str | None, umask: str) -> UmaskStack:
    s = UmaskStack(tmp, make_database_url(pg_admin_url), umask)
    s.start_server()
    s.login()
    return s


def upload_snapshot(s: Stack, tmp: Path) -> str:
    """A real snapshot upload (packs + manifest), by a fake worker registered through the API."""
    w = s.api("POST", "/api/v1/workers/register", token=s.agent_token, json={
        "name": "fake-" + uuid.uuid4().hex[:6], "hostname": "fake", "queues": ["snap"], "cpus": 1, "memory_bytes": 1,
        "run_as": "root", "is_root": True})
    view = s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "snap"}})
    token = s.api("POST", f"/api/v1/workers/{w['worker_id']}/claim", token=w["token"])["session_token"]
    src = tmp / f"ws-{view['id']}"
    src.mkdir()
    (src / "notes.txt").write_text(SECRET_CONTENT * 50)

    async def go():
        async with BerthClient(s.url, token) as client:
            return await snapshot_to_server(client, view["id"], src, state_dir=tmp / f"state-{view['id']}", emit=lambda line: None)

    return asyncio.run(go()).id


def store_objects(data: Path) -> tuple[list[Path], list[Path]]:
    store = data / "store"
    return sorted(store.glob("packs/**/*.pack")), sorted(store.glob("snapshots/**/*.manifest"))


def assert_private(s: UmaskStack) -> None:
    data = s.data
    assert mode(data) == 0o700
    assert loose_paths(data) == []
    expected = ["secret.key"] + ([] if s.database_url else ["berth.db", "berth.db-wal", "berth.db-shm"])
    for name in expected:
        assert mode(data / name) == 0o600, name
    packs, manifests = store_objects(data)
    assert packs and manifests
    for p in (data / "store", *{p.parent for p in packs + manifests}):
        assert mode(p) == 0o700, p


@pytest.mark.parametrize("umask", ["000", "022"])
def test_fresh_data_dir_is_private_whatever_the_umask(open_tmp, pg_admin_url, nonroot_user, umask):
    s = make_stack(open_tmp, pg_admin_url, umask)
    try:
        upload_snapshot(s, open_tmp)
        assert_private(s)
        pack = store_objects(s.data)[0][0]
        targets = [s.data / "secret.key", pack] + ([] if s.database_url else [s.data / "berth.db"])
        for target in targets:
            attempt = read_as(nonroot_user, target)
            assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, target
    finally:
        s.stop()


def test_loose_data_dir_is_tightened_with_one_log_line(open_tmp, pg_admin_url, nonroot_user):
    s = make_stack(open_tmp, pg_admin_url, "022")
    try:
        upload_snapshot(s, open_tmp)
        loosen(s.data)  # as main left it
        pack = store_objects(s.data)[0][0]
        assert read_as(nonroot_user, pack).returncode == 0  # the attack works on a loose data dir
        s.restart_server("server-2.log")
        assert_private(s)
        log = (open_tmp / "server-2.log").read_text()
        lines = [line for line in log.splitlines() if TIGHTENED in line]
        assert len(lines) == 1 and str(s.data) in lines[0], log
        secret_key = (s.data / "secret.key").read_text().strip()
        for secret in (secret_key, ADMIN_PASSWORD, s.token, s.agent_token):
            assert secret not in log
        assert read_as(nonroot_user, pack).returncode != 0
        if not s.database_url:
            assert "Permission denied" in read_as(nonroot_user, s.data / "berth.db").stderr
        s.restart_server("server-3.log")  # nothing left to tighten: nothing said
        assert TIGHTENED not in (open_tmp / "server-3.log").read_text()
        upload_snapshot(s, open_tmp)  # still works on the tightened store
        assert_private(s)
    finally:
        s.stop()


def test_agent_data_dir_and_session_files_are_private(open_tmp, pg_admin_url, nonroot_user):
    s = make_stack(open_tmp, pg_admin_url, "000")
    agent_dir = open_tmp / "agent"
    try:
        s.start_umask_agent(agent_dir, "priv", "priv")
        assert mode(agent_dir) == 0o700 and mode(agent_dir / "worker.json") == 0o600
        assert mode(agent_dir / "sessions") == 0o700
        view = s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "priv"}})
        s.wait_status(view["id"], "active")
        session_dir = agent_dir / "sessions" / view["id"]
        assert mode(session_dir) == 0o700
        for name in ("assignment.json", "secrets.json", "supervisor.log"):
            if (session_dir / name).exists():  # secrets.json is wiped after setup
                assert mode(session_dir / name) == 0o600, name
        assert "Permission denied" in read_as(nonroot_user, agent_dir / "worker.json").stderr
        s.api("POST", f"/api/v1/sessions/{view['id']}/stop")
        s.wait_status(view["id"], "stopped")

        kill_tree(s.agents.pop())
        loosen(agent_dir)
        assert read_as(nonroot_user, agent_dir / "worker.json").returncode == 0  # the attack on a loose dir
        s.umask = "022"
        s.start_umask_agent(agent_dir, "priv", "priv")
        assert mode(agent_dir) == 0o700 and mode(agent_dir / "worker.json") == 0o600
        assert mode(agent_dir / "sessions") == 0o700 and mode(session_dir) == 0o700
        assert mode(session_dir / "assignment.json") == 0o600
        assert "Permission denied" in read_as(nonroot_user, agent_dir / "worker.json").stderr
        log = (open_tmp / "agent-priv.log").read_text()
        assert len([line for line in log.splitlines() if TIGHTENED in line]) == 1
        token = json.loads((agent_dir / "worker.json").read_text())["token"]
        assert token not in log
    finally:
        s.stop()


@pytest.mark.parametrize("umask", ["000", "022"])
def test_cli_credentials_are_private(open_tmp, server_only, umask):
    home = open_tmp / "home"
    (home / ".config" / "berth").mkdir(parents=True)
    creds = home / ".config" / "berth" / "credentials.json"
    creds.write_text("{}")
    creds.chmod(0o644)  # left by an older berth
    (home / ".config" / "berth").chmod(0o755)
    fresh = open_tmp / "fresh-home"
    fresh.mkdir()
    for h in (home, fresh):
        env = server_only.env(HOME=str(h))
        cmd = ["sh", "-c", f'umask {umask}; exec "$0" "$@"', BERTH, "login", "--server", server_only.url,
               "--username", "admin", "--password", ADMIN_PASSWORD]
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)
        assert mode(h / ".config" / "berth") == 0o700
        assert mode(h / ".config" / "berth" / "credentials.json") == 0o600
    assert mode(fresh / ".config") == 0o700  # created by berth: private as XDG asks


def test_berth_up_server_private_agent_keeps_the_umask(open_tmp):
    """`berth up`: the server process runs with umask 077; its agent child gets the caller's umask back
    (the session files it writes for session users are not private)."""
    import psutil

    port = free_port()
    env = dict(os.environ, HOME=str(open_tmp), BERTH_ADMIN_PASSWORD="up-private-password")
    env.pop("BERTH_DATABASE_URL", None)
    up = subprocess.Popen(["sh", "-c", 'umask 022; exec "$0" "$@"', BERTH, "up", "--data-dir", str(open_tmp / "data"),
                           "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", up)
        deadline = time.monotonic() + 30
        while not psutil.Process(up.pid).children() and time.monotonic() < deadline:
            time.sleep(0.1)
        agent = psutil.Process(up.pid).children()[0]

        def umask_of(pid: int) -> str:
            return next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("Umask:"))

        assert umask_of(up.pid) == "0077" and umask_of(agent.pid) == "0022"
        data = open_tmp / "data"
        assert mode(data) == 0o700
        for name in ("berth.db", "secret.key", "agent.log"):
            assert mode(data / name) == 0o600, name
        r = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert r.status_code == 200
    finally:
        kill_tree(up, timeout=20)


async def test_writers_are_private_without_the_server_umask(tmp_path):
    """The explicit modes alone (no umask 077 from `berth server`): store objects and temp upload files,
    a new SQLite database with its -wal/-shm, secret.key."""
    from berth.server.db.engine import make_engine
    from berth.server.services.secretbox import SecretBox
    from berth.server.services.store import open_store

    old = os.umask(0)
    try:
        store = open_store(str(tmp_path / "store"))
        store.put("snapshots/1/x.manifest", b"manifest")
        upload = store.upload("packs/1/ab/y.pack")
        upload.write([b"part"])
        assert mode(Path(upload.tmp)) == 0o600  # the temp upload file, before it appears
        upload.commit()
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}")
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            for name in ("berth.db", "berth.db-wal", "berth.db-shm"):
                assert mode(tmp_path / name) == 0o600, name
        await engine.dispose()
        SecretBox.from_settings(None, tmp_path)
    finally:
        os.umask(old)
    tmp_path.chmod(0o700)
    assert mode(tmp_path / "secret.key") == 0o600
    assert loose_paths(tmp_path) == []
