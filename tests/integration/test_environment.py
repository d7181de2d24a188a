"""The setup steps (berth.agent.setup), session users, login files and ending a session's processes, against
real processes, users, git and PyPI (the user tests need root)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import glob
import http.server
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import psutil
import pytest

from berth.agent import processes
from berth.agent import session_users
from berth.agent.as_session import Identity, run_task
from berth.agent.backends import ProcessBackend
from berth.agent.login_files import session_env
from berth.agent.run_as import RunAs
from berth.agent.setup import python_env
from berth.agent.setup.git import clone_git
from berth.agent.setup.init_script import run_init_script
from berth.agent.setup.python_env import create_venv, install_packages
from berth.errors import SetupFailed

pytestmark = pytest.mark.integration
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates system users)")


def as_user(run_as: RunAs, argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", {"HOME": str(run_as.home), "PATH": "/usr/bin:/bin", "USER": run_as.user})
    if run_as.is_other:
        kw.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not processes._alive(psutil.Process(pid)):
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def base():
    """A temp dir session users can traverse (pytest's tmp_path lives under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="berth-envtest-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def backend(base):
    """A prepared process backend: its own session user (as root) or the current user, with a home under base."""
    backend = ProcessBackend(f"t{uuid.uuid4().hex[:15]}", base / "session", homes_dir=base / "homes",
                             runtime_dir=base / "run", password="pw-" + uuid.uuid4().hex)
    host = await backend.prepare()
    try:
        yield backend
    finally:
        await backend.teardown(host, exclude_pids={os.getpid()})
        if host.system_user:
            with pytest.raises(KeyError):
                pwd.getpwnam(host.run_as.user)


@pytest.fixture
def user(backend) -> RunAs:
    """Who the backend's session runs as."""
    return backend.host.run_as


def shadow_hash(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":")[1]
    raise KeyError(name)


def password_ok(name: str, password: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    hashed = shadow_hash(name)
    return crypt.crypt(password, hashed) == hashed


# ------------------------------------------------------------------------------------------- users

@needs_root
async def test_create_session_user_sets_password_and_home(base):
    name = f"berth-t{uuid.uuid4().hex[:10]}"
    try:
        t0 = time.perf_counter()
        run_as = await session_users.create_session_user(name, base / "home", "first-pass")
        elapsed = time.perf_counter() - t0
        print(f"create_session_user: {elapsed * 1000:.0f} ms")
        assert elapsed < 2.0
        entry = pwd.getpwnam(name)
        assert (run_as.user, run_as.uid, run_as.gid, run_as.home) == (name, entry.pw_uid, entry.pw_gid, base / "home")
        assert entry.pw_shell == "/bin/bash" and entry.pw_dir == str(base / "home") and entry.pw_gecos == "berth session"
        assert subprocess.run(["getent", "group", name], capture_output=True).returncode == 0
        assert shadow_hash(name).startswith("$") and password_ok(name, "first-pass")
        st = (base / "home").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (run_as.uid, run_as.gid, 0o750)
        # idempotent: a second call keeps the user and re-sets the password
        again = await session_users.create_session_user(name, base / "home", "second:pass")
        assert again == run_as and password_ok(name, "second:pass") and not password_ok(name, "first-pass")
    finally:
        await session_users.remove_session_user(name)


@needs_root
async def test_remove_session_user_kills_leftovers_and_keeps_home(base):
    name = f"berth-t{uuid.uuid4().hex[:10]}"
    run_as = await session_users.create_session_user(name, base / "home", "pw")
    (base / "home" / "work.txt").write_text("kept")
    leftover = subprocess.Popen(["sleep", "100"], user=run_as.uid, group=run_as.gid, extra_groups=[],
                                start_new_session=True)
    try:
        await session_users.remove_session_user(name)
        assert leftover.wait(timeout=5) is not None
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        assert (base / "home" / "work.txt").read_text() == "kept"
        await session_users.remove_session_user(name)  # already gone: no error
    finally:
        leftover.kill()


@needs_root
async def test_remove_session_user_refuses_other_users():
    for name in ("root", "nobody"):
        with pytest.raises(SetupFailed, match="not a berth session user"):
            await session_users.remove_session_user(name)
        with pytest.raises(SetupFailed, match="not a berth session user"):  # nor re-password it
            await session_users.create_session_user(name, Path("/nonexistent"), "pw")


# --------------------------------------------------------------------------------------- venv/pip

async def test_create_venv_as_session_user(user, backend):
    venv = user.home / ".venv"
    t0 = time.perf_counter()
    await create_venv("/usr/bin/python3", venv, backend)
    print(f"create_venv: {(time.perf_counter() - t0) * 1000:.0f} ms")
    out = as_user(user, [str(venv / "bin/python"), "-c", "import sys; print(sys.prefix)"])
    assert out.returncode == 0 and out.stdout.strip() == str(venv)
    assert venv.stat().st_uid == user.uid
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()


async def test_create_venv_bad_python_fails_clearly(user, backend):
    with pytest.raises(SetupFailed, match="could not create the python environment"):
        await create_venv("/nonexistent/python3", user.home / ".venv", backend)


async def test_install_packages_from_pypi(user, backend):
    venv = user.home / ".venv"
    await create_venv("/usr/bin/python3", venv, backend)
    lines: list[str] = []
    t0 = time.perf_counter()
    await install_packages(venv, ["six"], backend, lines.append)
    print(f"install_packages(six): {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert lines[0].startswith("installing with uv: six") and any("six" in line for line in lines[1:])
    out = as_user(user, [str(venv / "bin/python"), "-c", "import six; print(six.__file__)"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(venv))
    for dirpath, dirnames, filenames in os.walk(venv):  # everything handed over to the session user
        for n in dirnames + filenames:
            assert os.lstat(os.path.join(dirpath, n)).st_uid == user.uid, n


async def test_install_packages_failure_carries_installer_reason(user, backend):
    venv = user.home / ".venv"
    await create_venv("/usr/bin/python3", venv, backend)
    lines: list[str] = []
    with pytest.raises(SetupFailed) as err:
        await install_packages(venv, ["berth-no-such-package-xyz==9.9"], backend, lines.append)
    msg = err.value.message
    assert msg.startswith("package installation failed") and "berth-no-such-package-xyz" in msg
    assert "not found" in msg and len(msg.splitlines()) <= 16


async def test_install_packages_pip_fallback(user, backend, monkeypatch):
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("no pip next to the agent's python")
    monkeypatch.setattr(python_env, "_find_uv", lambda: None)
    venv = user.home / ".venv"
    await create_venv("/usr/bin/python3", venv, backend)
    lines: list[str] = []
    await install_packages(venv, ["tomli"], backend, lines.append)
    assert lines[0] == "installing with pip: tomli"
    out = as_user(user, [str(venv / "bin/python"), "-c", "import tomli; print(tomli.__file__)"])
    assert out.returncode == 0 and out.stdout.startswith(str(venv)), out.stderr
    with pytest.raises(SetupFailed, match="berth-no-such-package-xyz"):
        await install_packages(venv, ["berth-no-such-package-xyz==9.9"], backend, lines.append)


# -------------------------------------------------------------------------------------------- git

@pytest.fixture
def origin(base, user):
    """A bare repo with commits c1, c2 on main and c3 on branch 'feature' (file:// URL), owned by the
    session user (git refuses to serve a repository owned by someone else: 'dubious ownership')."""
    work = base / "src"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    commits = {}
    for name, branch in (("c1", "main"), ("c2", "main"), ("c3", "feature")):
        if branch == "feature" and name == "c3":
            git("checkout", "-q", "-b", "feature", cwd=work)
        (work / "file.txt").write_text(name)
        git("add", "file.txt", cwd=work)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", name, cwd=work)
        commits[name] = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "main", cwd=work)  # the bare repo's HEAD (default branch) is main
    bare = base / "origin.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("update-server-info", cwd=bare)  # for the dumb-http server below
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(bare)], check=True)
    return f"file://{bare}", commits


async def test_clone_by_branch(user, backend, origin, base):
    url, commits = origin
    lines: list[str] = []
    target = await clone_git(url, user.home / "ws", branch="feature", commit=None, token=None, ssh_key=None,
                                  backend=backend, emit=lines.append, scratch=base / "scratch")
    assert target == user.home / "ws" / "origin"
    assert lines[0] == f"cloning {url} (branch feature) into {target}"
    assert (target / "file.txt").read_text() == "c3"
    assert as_user(user, ["git", "-C", str(target), "rev-parse", "--abbrev-ref", "HEAD"]).stdout.strip() == "feature"
    assert target.stat().st_uid == user.uid and (user.home / "ws").stat().st_uid == user.uid


async def test_clone_by_commit_then_refetch_existing_checkout(user, backend, origin, base):
    url, commits = origin
    kw = dict(token=None, ssh_key=None, backend=backend, scratch=base / "scratch")
    lines: list[str] = []
    target = await clone_git(url, user.home / "ws", branch=None, commit=commits["c1"], emit=lines.append, **kw)
    head = as_user(user, ["git", "-C", str(target), "rev-parse", "HEAD"]).stdout.strip()
    assert head == commits["c1"] and (target / "file.txt").read_text() == "c1"
    assert lines[-1] == f"checked out commit {commits['c1']}"
    # a second run (restored workspace): fetch + move to the requested commit, no re-clone
    lines.clear()
    await clone_git(url, user.home / "ws", branch=None, commit=commits["c3"], emit=lines.append, **kw)
    assert "already holds a git checkout" in lines[0] and (target / "file.txt").read_text() == "c3"
    # local changes are never thrown away
    (target / "file.txt").write_text("mine")
    lines.clear()
    await clone_git(url, user.home / "ws", branch="main", commit=None, emit=lines.append, **kw)
    assert (target / "file.txt").read_text() == "mine" and "local changes" in lines[-1]


async def test_clone_bad_url_and_bad_branch_fail_clearly(user, backend, origin, base):
    url, _ = origin
    kw = dict(commit=None, token=None, ssh_key=None, backend=backend, emit=lambda m: None, scratch=base / "scratch")
    with pytest.raises(SetupFailed) as err:
        await clone_git(f"file://{base}/nope.git", user.home / "ws", branch=None, **kw)
    assert err.value.message.startswith(f"git clone of file://{base}/nope.git failed:")
    assert "does not appear to be a git repository" in err.value.message
    assert "Cloning into" not in err.value.message  # only git's complaint
    with pytest.raises(SetupFailed) as err:
        await clone_git(url, user.home / "ws2", branch="no-such-branch", **kw)
    assert "no-such-branch" in err.value.message and "not found" in err.value.message
    with pytest.raises(SetupFailed, match="checking out commit|fetching commit"):
        await clone_git(url, user.home / "ws3", branch=None, **{**kw, "commit": "0" * 40})


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the bare repo over git's dumb-http protocol behind basic auth, recording what it got."""
    expected = ""
    seen: list[str] = []

    def do_GET(self):
        got = self.headers.get("Authorization", "")
        self.seen.append(got)
        if got != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.path = self.path.split("?")[0]  # no smart-http: git falls back to dumb http
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_repo_server(root: Path, token: str):
    handler = type("H", (_AuthHandler,), {"expected": "Basic " + base64.b64encode(f"oauth2:{token}".encode()).decode(),
                                         "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def new_setup_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "berth-setup-*")))


def secrets_removed(base: Path, before: set[str]) -> bool:
    """No private setup dir left: in the system temp dir (other user) nor in scratch (own user)."""
    scratch = base / "scratch"
    return new_setup_dirs() == before and (not scratch.exists() or not any(scratch.iterdir()))


async def test_clone_with_token_uses_askpass_and_never_leaks_it(user, backend, origin, base):
    token = "tok-" + uuid.uuid4().hex
    lines: list[str] = []
    before = new_setup_dirs()
    kw = dict(branch=None, commit=None, ssh_key=None, backend=backend, emit=lines.append, scratch=base / "scratch")
    with http_repo_server(base, token) as (port, handler):
        url = f"http://127.0.0.1:{port}/origin.git"
        target = await clone_git(url, user.home / "ws", token=token, **kw)
        assert (target / "file.txt").read_text() == "c2"
        assert handler.expected in handler.seen  # the askpass helper answered with the token
        with pytest.raises(SetupFailed) as err:  # a wrong token: rejected, and not shown
            await clone_git(url, user.home / "ws2", token=token + "-wrong", **kw)
        assert token not in err.value.message and "failed" in err.value.message
    config = (target / ".git" / "config").read_text()
    assert token not in config and f"url = {url}" in config
    assert not any(token in line for line in lines)
    # credentials in the URL itself and the token never show in the error of a failing clone
    with pytest.raises(SetupFailed) as err:
        await clone_git(f"http://someone:{token}@127.0.0.1:1/repo.git", user.home / "ws3", token=token, **kw)
    assert token not in err.value.message and "someone" not in err.value.message
    assert "http://127.0.0.1:1/repo.git" in err.value.message
    assert not any(token in line for line in lines)
    assert secrets_removed(base, before)


async def test_clone_with_ssh_key_fails_cleanly_and_removes_key(user, backend, base):
    before = new_setup_dirs()
    with pytest.raises(SetupFailed) as err:
        await clone_git("ssh://git@127.0.0.1:1/org/repo.git", user.home / "ws", branch=None, commit=None,
                             token=None, ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key\n", backend=backend,
                             emit=lambda m: None, scratch=base / "scratch")
    assert "git clone of ssh://127.0.0.1:1/org/repo.git failed" in err.value.message
    assert "not-a-key" not in err.value.message
    assert secrets_removed(base, before)


# ------------------------------------------------------------------------------------ init script

async def test_init_script_streams_in_order_as_user_with_env_and_cwd(user, backend, base):
    ws = user.home / "ws"
    ws.mkdir()
    os.chown(ws, user.uid, user.gid)
    env = session_env("sess-1", user, user.home / ".venv", ws, {"FOO": "bar"})
    lines: list[str] = []
    script = "# a comment\necho one\necho two >&2\nid -un\npwd\necho \"$FOO $BERTH_SESSION_ID\"\n  # indented\n"
    await run_init_script(script, cwd=ws, env=env, backend=backend, emit=lines.append, scratch=base / "scratch")
    assert lines == ["one", "two", user.user, str(ws), "bar sess-1"]


async def test_init_script_failure_status(user, backend, base):
    with pytest.raises(SetupFailed, match="init script exited with status 3"):
        await run_init_script("echo before\nexit 3\n", cwd=user.home, env={"PATH": "/usr/bin:/bin"},
                                   backend=backend, emit=lambda m: None, scratch=base / "scratch")


async def test_init_script_background_job_does_not_block(user, backend, base):
    sid = "bg-" + uuid.uuid4().hex[:8]
    lines: list[str] = []
    env = {"PATH": "/usr/bin:/bin", "BERTH_SESSION_ID": sid}
    t0 = time.monotonic()
    await run_init_script("(sleep 1.5; echo late; sleep 100) &\necho started\n", cwd=user.home, env=env,
                               backend=backend, emit=lines.append, scratch=base / "scratch")
    assert time.monotonic() - t0 < 1.4 and lines == ["started"]
    try:
        for _ in range(60):  # the job's output keeps flowing to emit after setup
            if "late" in lines:
                break
            await asyncio.sleep(0.05)
        assert lines == ["started", "late"]
    finally:
        assert processes.kill_session_processes(sid) >= 1  # the sleep (bash may have exec'd into it)


# ------------------------------------------------------------------------------------ login files

async def test_login_wrapper_command_and_login_shell(user, backend, base):
    ws, venv = user.home / "ws", user.home / ".venv"
    ws.mkdir()
    os.chown(ws, user.uid, user.gid)
    await create_venv("/usr/bin/python3", venv, backend)
    (user.home / ".bash_profile").write_text("export FROM_USER_PROFILE=yes\n")
    wrapper = user.home / ".berth" / "session-shell"
    args = {"home": str(user.home), "workspace": str(ws), "venv": str(venv), "session_id": "sess-42", "wrapper": str(wrapper)}
    await run_task(Identity(user.uid, user.gid), "login_files", args)  # as the session does it: as the user
    await run_task(Identity(user.uid, user.gid), "login_files", args)  # twice: ours is not "saved" again
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o755
    assert (user.home / ".bash_profile.before-berth").read_text() == "export FROM_USER_PROFILE=yes\n"
    assert (user.home / ".bash_profile").stat().st_uid == user.uid
    sshd_env = {"HOME": str(user.home), "USER": user.user, "LOGNAME": user.user, "PATH": "/usr/bin:/bin"}
    probe = 'pwd; which python; echo "$BERTH_SESSION_ID $VIRTUAL_ENV"'
    out = as_user(user, [str(wrapper)], env={**sshd_env, "SSH_ORIGINAL_COMMAND": probe}, cwd="/")
    assert out.stdout.splitlines() == [str(ws), f"{venv}/bin/python", f"sess-42 {venv}"], out.stderr
    # no command: a login shell (Debian's /etc/profile resets PATH; our .bash_profile fixes it up)
    out = as_user(user, [str(wrapper)], env=sshd_env, cwd="/", input=probe + "; echo $FROM_USER_PROFILE\n")
    assert out.stdout.splitlines() == [str(ws), f"{venv}/bin/python", f"sess-42 {venv}", "yes"], out.stderr
    # interactive login shell on a terminal, as an ssh client would get
    out = as_user(user, ["script", "-qec", str(wrapper), "/dev/null"], env=sshd_env, cwd="/",
                  input="echo PWD=$PWD PY=$(which python); exit\n")
    assert f"PWD={ws} PY={venv}/bin/python" in out.stdout, out.stdout + out.stderr
