"""Running a setup command and handing it secrets: what the setup steps share.

Secrets (git token, ssh key, init script) go into a private temporary directory, removed right after the
step: the caller's ``scratch`` when the step runs as the agent's own user, otherwise a fresh ``mkdtemp``
under the system temp dir owned by the session user (the supervisor's scratch dir is root-only, so the
session user could not read files there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from berth.agent.login_files import BASE_PATH
from berth.agent.run_as import RunAs

if TYPE_CHECKING:
    from berth.agent.backends.base import SessionBackend

Emit = Callable[[str], None]

_TAIL = 15  # lines of a failing tool's output kept for the error message
_MAX_LINE = 4000
_PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR")
_background: set[asyncio.Task] = set()  # output pumps outliving their process (see run_command)


def session_run_as(backend: SessionBackend) -> RunAs:
    """Who the session's processes run as: known once the backend is prepared."""
    if backend.host is None:
        raise RuntimeError("a setup step ran before backend.prepare()")
    return backend.host.run_as


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
def private_dir(scratch: Path, run_as: RunAs, under: Path | None = None) -> Iterator[Path]:
    """A 0700 dir readable by run_as only (and root), removed afterwards; see the module docstring. `under`:
    where the backend wants it instead of the system temp dir (``SessionHost.setup_dir``)."""
    if run_as.is_other:
        path = Path(tempfile.mkdtemp(prefix="berth-setup-", dir=under))
        os.chown(path, run_as.uid, run_as.gid)
    else:
        Path(scratch).mkdir(parents=True, exist_ok=True, mode=0o700)
        path = Path(tempfile.mkdtemp(prefix="setup-", dir=scratch))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_private(path: Path, content: str, mode: int, run_as: RunAs) -> None:
    """Create `path` (never through a link, never over a file) with `mode`, owned by run_as."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    if run_as.is_other:
        os.chown(path, run_as.uid, run_as.gid)


def tool_env(run_as: RunAs) -> dict[str, str]:
    """The environment of a setup tool: the user's identity, a plain PATH, and the operator's proxy settings."""
    env = {"HOME": str(run_as.home), "USER": run_as.user, "LOGNAME": run_as.user, "PATH": BASE_PATH,
           "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in _PASSTHROUGH if k in os.environ})
    return env
