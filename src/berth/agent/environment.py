"""Prepare a session's environment on the worker, and find/kill everything a session started.

Used by the per-session supervisor (users: ``session_users``). Every step that touches user-controlled
content (venv creation, packages, git, the init script; files in the home go through
``berth.agent.as_session``) runs *as the session user*, so a git hook or a planted symlink in a restored
workspace never runs or is followed as root.

Secrets (git token, ssh key, init script) go into a private temporary directory, removed right
after the step: the caller's ``scratch`` when the step runs as the agent's own user, otherwise a
fresh ``mkdtemp`` under the system temp dir owned by the session user (the supervisor's scratch
dir is root-only, so the session user could not read files there).
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


from berth.agent.login_files import BASE_PATH
from berth.agent.processes import SESSION_ENV_VAR
from berth.errors import SetupFailed

Emit = Callable[[str], None]

_TAIL = 15  # lines of a failing tool's output kept for the error message
_MAX_LINE = 4000
_PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR")
_background: set[asyncio.Task] = set()  # output pumps outliving their process (see run_command)


@dataclass
class RunAs:
    user: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def current(cls, home: Path) -> RunAs:
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:  # containers running under an arbitrary uid have no passwd entry
            user = str(uid)
        return cls(user, uid, os.getgid(), Path(home))

    @property
    def is_other(self) -> bool:  # acting for this user means switching to it (we are root, it is not us)
        return self.uid != os.geteuid()


# ---------------------------------------------------------------------------------------- helpers

_URL_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Strip user[:pass]@ from URLs and replace each secret value with ***."""
    text = _URL_USERINFO.sub(r"\1", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _user_kwargs(run_as: RunAs | None) -> dict:
    if run_as is None or not run_as.is_other:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}  # drop root's groups too


async def _pump(stream: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Split output on \\n and \\r (progress bars) without StreamReader.readline's size limit."""
    buf = b""

    def line(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if text:
            on_line(text)

    while chunk := await stream.read(65536):
        *lines, buf = re.split(rb"[\r\n]", buf + chunk)
        for raw in lines:
            line(raw)
        while len(buf) > _MAX_LINE:
            line(buf[:_MAX_LINE])
            buf = buf[_MAX_LINE:]
    line(buf)


async def run_command(argv: list[str], *, run_as: RunAs | None = None, env: dict[str, str] | None = None,
               cwd: str | Path | None = None, stdin: bytes | None = None,
               on_line: Callable[[str], None] | None = None, pass_fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
    """Run argv (no shell), stdout+stderr merged and streamed to on_line; return (status, last lines)."""
    tail: deque[str] = deque(maxlen=_TAIL)

    def line(text: str) -> None:
        tail.append(text)
        if on_line:
            on_line(text)

    # Our own pipe, not asyncio's PIPE: with that, wait() also waits for the output pipe to close, which
    # a background job (e.g. `nohup server &` in an init script) keeps open for as long as it runs.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=write_fd, stderr=write_fd, env=env, cwd=cwd, start_new_session=True, pass_fds=pass_fds,
            **_user_kwargs(run_as))
    except OSError as exc:  # missing binary, unreadable cwd, ...: report like a failed command
        os.close(read_fd)
        line(f"{exc.filename or argv[0]}: {exc.strerror or exc}")
        return 127, list(tail)
    finally:
        os.close(write_fd)
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
    pump = asyncio.create_task(_pump(reader, line))
    try:
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may exit without reading
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        status = await proc.wait()
        # Don't wait for background jobs still holding the pipe, but keep draining it (and emitting their
        # lines) so they neither block on a full pipe nor die of SIGPIPE.
        done, _ = await asyncio.wait({pump}, timeout=1.0)
        if not done:
            _background.add(pump)
            pump.add_done_callback(_background.discard)
    except BaseException:  # cancelled (e.g. a setup timeout): take the whole process group down
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        pump.cancel()
        transport.close()
        raise
    return status, list(tail)


@contextlib.contextmanager
def _private_dir(scratch: Path, run_as: RunAs) -> Iterator[Path]:
    """A 0700 dir readable by run_as only (and root), removed afterwards; see the module docstring."""
    if run_as.is_other:
        path = Path(tempfile.mkdtemp(prefix="berth-setup-"))
        os.chown(path, run_as.uid, run_as.gid)
    else:
        Path(scratch).mkdir(parents=True, exist_ok=True, mode=0o700)
        path = Path(tempfile.mkdtemp(prefix="setup-", dir=scratch))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, content: str, mode: int, run_as: RunAs) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    if run_as.is_other:
        os.chown(path, run_as.uid, run_as.gid)


def _tool_env(run_as: RunAs) -> dict[str, str]:
    env = {"HOME": str(run_as.home), "USER": run_as.user, "LOGNAME": run_as.user, "PATH": BASE_PATH,
           "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in _PASSTHROUGH if k in os.environ})
    return env


# ----------------------------------------------------------------------------------- python env

async def create_venv(python: str, venv: Path, run_as: RunAs) -> None:
    """Create a bare venv (no pip, no system site-packages) as run_as, which also proves it can run python."""
    venv = Path(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    status, tail = await run_command([python, "-m", "venv", "--without-pip", str(venv)], run_as=run_as,
                              env=_tool_env(run_as), cwd="/")
    if status:
        raise SetupFailed(f"could not create the python environment {venv} with {python} as {run_as.user}: "
                          + "\n".join(tail))


_OPTION_NAMES = {"-i": "--index-url", "--index-url": "--index-url", "--extra-index-url": "--extra-index-url",
                 "-f": "--find-links", "--find-links": "--find-links"}


def parse_requirements(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split pip-syntax lines into (requirements, index options). Only index options (http(s) URLs) and
    --pre are allowed: a session's package list names packages and indexes, nothing on the worker's disk."""
    tokens: list[str] = []
    for item in items:
        item = re.sub(r"(^|\s)#.*", "", item).strip()  # pip's comment rule: '#' at start or after space
        if item:
            tokens.extend(item.split() if item.startswith("-") else [item])
    reqs, opts = [], []
    it = iter(tokens)
    for tok in it:
        if not tok.startswith("-"):
            reqs.append(tok)
            continue
        name, eq, value = tok.partition("=")
        if name == "--pre":
            opts.append("--pre")
            continue
        if name not in _OPTION_NAMES:
            raise SetupFailed(f"unsupported option in packages: {name} (allowed: --index-url, "
                              "--extra-index-url, --find-links, --pre)")
        value = value if eq else next(it, "")
        if not re.match(r"https?://", value):
            raise SetupFailed(f"{name} needs an http(s) URL")
        opts += [_OPTION_NAMES[name], value]
    return reqs, opts


def pip_index_options() -> list[str]:
    """The operator's pip index settings (pip.conf, PIP_* env) as uv options: uv reads neither."""
    if any(k in os.environ for k in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL")):
        return []  # uv is configured explicitly: leave it alone
    cfg = configparser.RawConfigParser()
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    home = Path.home()
    cfg.read([*(f"{d}/pip/pip.conf" for d in dirs), "/etc/pip.conf", home / ".pip/pip.conf",
              home / ".config/pip/pip.conf", os.environ.get("PIP_CONFIG_FILE", "")])  # later ones win, as in pip
    opts = []
    for key in ("index-url", "extra-index-url", "find-links"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        for section in ("install", "global"):
            if value is None and cfg.has_option(section, key):
                value = cfg.get(section, key)
        for v in (value or "").split():
            opts += [f"--{key}", v]
    if opts.count("--extra-index-url") + opts.count("--index-url") > 1:
        opts += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version across all indexes
    return opts


def _find_uv() -> str | None:
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv

        return uv.find_uv_bin()
    return shutil.which("uv")


async def install_packages(venv: Path, requirements: list[str], run_as: RunAs, emit: Emit) -> None:
    """Install pip-syntax requirements into the venv (uv, else pip) as the session user.

    The agent's uv binary may sit where session users cannot look (a venv under /root): it is opened here
    and executed through /proc/self/fd, which needs only its execute bit. The session gets its own uv cache
    in its home, so nothing of the agent's is shared with it and nothing of it is written as root."""
    reqs, opts = parse_requirements(requirements)
    if not reqs:
        return
    python = str(Path(venv) / "bin" / "python")
    uv = _find_uv()
    env = _tool_env(run_as) | {k: v for k, v in os.environ.items() if k.startswith(("UV_", "PIP_"))}
    pass_fds: tuple[int, ...] = ()
    if uv:
        config = pip_index_options()
        if "--index-url" in opts:  # the session's own index replaces the operator's default one
            config = [x for k, v in zip(config[::2], config[1::2], strict=True) if k != "--index-url" for x in (k, v)]
        opts = [x for o in opts for x in (("--prerelease", "allow") if o == "--pre" else (o,))]
        uv_fd = os.open(uv, os.O_RDONLY | os.O_CLOEXEC)
        pass_fds = (uv_fd,)
        env["UV_CACHE_DIR"] = str(run_as.home / ".cache" / "uv")
        argv = [f"/proc/self/fd/{uv_fd}", "pip", "install", "--python", python, "--color", "never", *config, *opts]
    else:  # pip reads pip.conf itself
        argv = [sys.executable, "-m", "pip", "--python", python, "install", "--progress-bar", "off",
                "--disable-pip-version-check", *opts]
    argv += ["--", *reqs]  # requirements can never be taken for options
    emit(f"installing with {'uv' if uv else 'pip'}: {redact(' '.join(reqs))}")
    try:
        status, tail = await run_command(argv, run_as=run_as, env=env, cwd="/", on_line=lambda line: emit(redact(line)),
                                         pass_fds=pass_fds)
    finally:
        for fd in pass_fds:
            os.close(fd)
    if status:
        raise SetupFailed(f"package installation failed (exit status {status}):\n" + redact("\n".join(tail)))


# ------------------------------------------------------------------------------------------- git

_ASKPASS = """#!/bin/sh
# git asks for a username unless the URL carries one, then for the password: the token (from env)
case "$1" in
  Username*) printf '%s\\n' "${BERTH_GIT_USERNAME:-oauth2}" ;;
  *) printf '%s\\n' "$BERTH_GIT_TOKEN" ;;
esac
"""


def repo_dir_name(repo: str) -> str:
    """'https://host/org/name.git' and 'git@host:org/name.git' -> 'name'."""
    name = re.split(r"[/:]", repo.rstrip("/"))[-1].removesuffix(".git")
    return name if name not in ("", ".", "..") else "repo"


def git_command(private: Path, *, token: str | None, ssh_key: str | None,
                run_as: RunAs) -> tuple[list[str], dict[str, str]]:
    """git's argv prefix and environment. Secrets only go into files in `private` and env vars: never
    argv (readable by every user via ps) nor the URL (stored in .git/config)."""
    env = _tool_env(run_as) | {"GIT_TERMINAL_PROMPT": "0"}  # fail instead of prompting
    git = ["git"]
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    if token:
        askpass = private / "askpass"
        _write_private(askpass, _ASKPASS, 0o700, run_as)
        env |= {"GIT_ASKPASS": str(askpass), "BERTH_GIT_TOKEN": token}
        git += ["-c", "credential.helper="]  # a configured helper must not store the token
    if ssh_key:
        key = private / "ssh-key"
        _write_private(key, ssh_key if ssh_key.endswith("\n") else ssh_key + "\n", 0o600, run_as)  # ssh wants the final newline
        ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    return git, env


async def clone_git(repo: str, dest: Path, *, branch: str | None, commit: str | None, token: str | None,
                    ssh_key: str | None, run_as: RunAs, emit: Emit, scratch: Path) -> Path:
    """Clone repo into dest/<repo name> as run_as and return that path. If it already holds a checkout
    (restored workspace), fetch instead, and move it to branch/commit only when it has no local changes."""
    for what, value in (("repository", repo), ("branch", branch), ("commit", commit)):
        if value is not None and (not value or value.startswith("-")):  # never let git take it for an option
            raise SetupFailed(f"invalid git {what}: {value!r}")
    secrets = [token, ssh_key]
    shown = redact(repo, secrets)
    dest = Path(dest)
    target = dest / repo_dir_name(repo)
    if not dest.exists():
        dest.mkdir(parents=True)
        if run_as.is_other:
            os.chown(dest, run_as.uid, run_as.gid)
    with _private_dir(scratch, run_as) as private:
        git, env = git_command(private, token=token, ssh_key=ssh_key, run_as=run_as)

        async def run_git(*args: str, what: str, quiet: bool = False) -> tuple[int, list[str]]:
            on_line = None if quiet else (lambda line: emit(redact(line, secrets)))
            status, tail = await run_command([*git, *args], run_as=run_as, env=env, cwd=dest, on_line=on_line)
            if status and what:
                reason = "\n".join(line for line in tail if not line.startswith("Cloning into"))
                raise SetupFailed(f"{what} failed: " + redact(reason, secrets))
            return status, tail

        at = ["-C", str(target)]
        if (target / ".git").exists():
            emit(f"{target} already holds a git checkout (restored workspace): fetching {shown}")
            await run_git(*at, "fetch", "origin", what=f"git fetch of {shown}")
            if branch or commit:
                _, changes = await run_git(*at, "status", "--porcelain", "--untracked-files=no", what="git status",
                                           quiet=True)
                if changes:
                    emit("it has local changes: keeping its current checkout")
                    return target
                if branch and not commit:
                    await run_git(*at, "checkout", branch, what=f"checking out branch {branch}")
        else:
            if target.exists() and any(target.iterdir()):
                raise SetupFailed(f"cannot clone {shown}: {target} exists and is not a git checkout")
            emit(f"cloning {shown}" + (f" (branch {branch})" if branch else "") + f" into {target}")
            await run_git("clone", *(["--branch", branch] if branch else []), "--", repo, str(target),
                          what=f"git clone of {shown}")
        if commit:
            missing, _ = await run_git(*at, "cat-file", "-e", f"{commit}^{{commit}}", what="", quiet=True)
            if missing:  # not on any fetched branch (e.g. a pull request's commit): ask for it by id
                await run_git(*at, "fetch", "origin", commit, what=f"fetching commit {commit}")
            await run_git(*at, "-c", "advice.detachedHead=false", "checkout", "--detach", commit,
                          what=f"checking out commit {commit}")
            emit(f"checked out commit {commit}")
    return target


# ----------------------------------------------------------------------------------- init script

async def run_init_script(script: str, *, cwd: Path, env: dict[str, str], run_as: RunAs, emit: Emit,
                          scratch: Path) -> None:
    """Run the user's script with bash as run_as, streaming its output lines (a background job's lines
    keep coming after it returns). The script runs as written: '#' at line start is a bash comment."""
    with _private_dir(scratch, run_as) as private:
        path = private / "init.sh"
        _write_private(path, script, 0o600, run_as)
        status, _ = await run_command(["/bin/bash", str(path)], run_as=run_as, env=env, cwd=cwd, on_line=emit)
    if status < 0:
        raise SetupFailed(f"init script was killed by signal {-status}")
    if status:
        raise SetupFailed(f"init script exited with status {status}")


# ------------------------------------------------------------------------------------ login files

def session_env(session_id: str, run_as: RunAs, venv: Path, workspace: Path,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"HOME": str(run_as.home), "USER": run_as.user, "LOGNAME": run_as.user, "SHELL": "/bin/bash",
           "PATH": f"{venv}/bin:{BASE_PATH}", "VIRTUAL_ENV": str(venv), "BERTH_WORKSPACE": str(workspace),
           "LANG": "C.UTF-8", **(extra or {})}
    env[SESSION_ENV_VAR] = session_id  # set last: teardown finds the session's processes by it
    return env
