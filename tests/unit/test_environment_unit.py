"""Unit tests of the setup steps' pure parts (berth.agent.setup; login_files.session_env): no root, no network."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess

import psutil
import pytest

from berth.agent import processes
from berth.agent.backends import ProcessBackend
from berth.agent.login_files import session_env
from berth.agent.run_as import RunAs
from berth.agent.setup.commands import run_command
from berth.agent.setup.git import clone_git, git_command, repo_dir_name
from berth.agent.setup.python_env import install_packages, parse_requirements, pip_index_options
from berth.errors import SetupFailed


@pytest.fixture
def me(tmp_path) -> RunAs:
    return RunAs.current(tmp_path)


def test_run_as_current(tmp_path):
    r = RunAs.current(tmp_path)
    assert (r.uid, r.gid, r.home) == (os.getuid(), os.getgid(), tmp_path)
    assert r.user and not r.is_other


@pytest.fixture
def unprepared(tmp_path) -> ProcessBackend:
    """A backend never prepared: a step that refuses its input must do so before running anything in it."""
    return ProcessBackend("s1", tmp_path / "session", homes_dir=tmp_path / "homes", runtime_dir=tmp_path / "run",
                          password="unused")


@pytest.mark.parametrize("repo,name", [
    ("https://github.com/org/project.git", "project"), ("https://github.com/org/project/", "project"),
    ("git@github.com:org/project.git", "project"), ("file:///tmp/x/origin.git", "origin"),
    ("project", "project"), ("https://host/", "host"), ("..", "repo"),
])
def test_repo_dir_name(repo, name):
    assert repo_dir_name(repo) == name


def test_parse_requirements_keeps_requirements_and_index_options():
    reqs, opts = parse_requirements([
        "six  # pinned later", "# a comment line", "", "torch>=2 ; python_version > '3.8'",
        "--extra-index-url https://download.pytorch.org/whl/cpu", "-i=https://pypi.example/simple", "--pre",
        "-f", "https://example.org/wheels/", "git+https://example.org/a/b.git#egg=b",
    ])
    assert reqs == ["six", "torch>=2 ; python_version > '3.8'", "git+https://example.org/a/b.git#egg=b"]
    assert opts == ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-url",
                    "https://pypi.example/simple", "--pre", "--find-links", "https://example.org/wheels/"]


@pytest.mark.parametrize("items", [["-r", "/etc/shadow"], ["-e /srv/code"], ["--find-links /root/wheels"],
                                   ["--index-url"], ["--target=/etc"]])
def test_parse_requirements_rejects_dangerous_options(items):
    # the install runs as root: an option reading or writing local paths must not pass
    with pytest.raises(SetupFailed):
        parse_requirements(items)


def test_pip_index_options_from_env_and_uv_precedence(monkeypatch, tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://conf.example/simple\nextra-index-url = https://a/ https://b/\n")
    for var in [k for k in os.environ if k.startswith(("PIP_", "UV_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    opts = pip_index_options()
    assert opts[:2] == ["--index-url", "https://conf.example/simple"]
    assert opts[2:] == ["--extra-index-url", "https://a/", "--extra-index-url", "https://b/",
                        "--index-strategy", "unsafe-best-match"]  # several indexes: pip's best-match rule
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")
    assert pip_index_options()[:2] == ["--index-url", "https://env.example/simple"]
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example/simple")
    assert pip_index_options() == []  # uv configured on its own: leave it


def test_session_env(tmp_path):
    run_as = RunAs("alice", 1234, 1234, tmp_path / "home")
    env = session_env("s1", run_as, tmp_path / "venv", tmp_path / "ws", {"FOO": "1", "BERTH_SESSION_ID": "x"})
    assert env["PATH"] == f"{tmp_path}/venv/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["VIRTUAL_ENV"] == f"{tmp_path}/venv" and env["BERTH_WORKSPACE"] == f"{tmp_path}/ws"
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (f"{tmp_path}/home", "alice", "alice", "/bin/bash")
    assert env["LANG"] == "C.UTF-8" and env["FOO"] == "1"
    assert env["BERTH_SESSION_ID"] == "s1"  # extra cannot remove the teardown marker


def test_git_command_keeps_secrets_out_of_argv(tmp_path, me):
    git, env = git_command(tmp_path, token="tok-SECRET-1", ssh_key="-----KEY-----", run_as=me)
    assert not any("tok-SECRET-1" in a or "KEY" in a for a in git)
    assert "credential.helper=" in git  # no helper may store the token
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["BERTH_GIT_TOKEN"] == "tok-SECRET-1"
    askpass = tmp_path / "askpass"
    assert env["GIT_ASKPASS"] == str(askpass) and stat.S_IMODE(askpass.stat().st_mode) == 0o700
    assert "tok-SECRET-1" not in askpass.read_text()
    key = tmp_path / "ssh-key"
    assert key.read_text() == "-----KEY-----\n" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert env["GIT_SSH_COMMAND"] == (f"ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -i {key} "
                                      "-o IdentitiesOnly=yes")

    def ask(prompt: str) -> str:
        return subprocess.run([str(askpass), prompt], env=env, capture_output=True, text=True).stdout

    assert ask("Username for 'https://host': ") == "oauth2\n"
    assert ask("Password for 'https://oauth2@host': ") == "tok-SECRET-1\n"


def test_git_command_without_secrets(tmp_path, me):
    git, env = git_command(tmp_path, token=None, ssh_key=None, run_as=me)
    assert git == ["git"] and "GIT_ASKPASS" not in env and list(tmp_path.iterdir()) == []


async def test_run_streams_lines_split_on_cr_and_keeps_tail():
    lines: list[str] = []
    script = "printf 'a\\rb\\n'; for i in $(seq 1 20); do echo line$i; done; echo err >&2; exit 4"
    status, tail = await run_command(["bash", "-c", script], on_line=lines.append)
    assert status == 4
    assert lines[:3] == ["a", "b", "line1"] and lines[-1] == "err"
    assert len(tail) == 15 and tail[-1] == "err"


async def test_run_missing_binary_reports_instead_of_raising():
    status, tail = await run_command(["/nonexistent/tool"])
    assert status == 127 and "No such file" in tail[0]


async def test_run_cancel_kills_process_group(tmp_path):
    marker = tmp_path / "pid"
    task = asyncio.create_task(run_command(["bash", "-c", f"sleep 30 & echo $! > {marker}; wait"]))
    for _ in range(100):
        if marker.exists() and marker.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(marker.read_text())
    for _ in range(100):
        try:
            if not processes._alive(psutil.Process(pid)):
                break
        except psutil.NoSuchProcess:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the background child survived the cancellation")


async def test_backend_runs_nothing_before_prepare(unprepared):
    with pytest.raises(RuntimeError, match="before prepare"):
        await unprepared.run_in_session(["true"], env={}, cwd="/")


async def test_install_rejects_options_before_running(tmp_path, unprepared):
    with pytest.raises(SetupFailed, match="unsupported option"):
        await install_packages(tmp_path / "venv", ["-r", "/etc/shadow"], unprepared, lambda m: None)


async def test_clone_rejects_option_like_values(tmp_path, unprepared):
    for kwargs in ({"branch": "--upload-pack=x", "commit": None}, {"branch": None, "commit": "-f"}):
        with pytest.raises(SetupFailed, match="invalid git"):
            await clone_git("file:///x.git", tmp_path, token=None, ssh_key=None, backend=unprepared,
                            emit=lambda m: None, scratch=tmp_path / "s", **kwargs)
