"""A session's desktop on the worker: Xvnc (the X server and the VNC server in one process; it resizes with the
viewer), openbox and an xterm, each run as the session user through the backend (``run_in_session``; cancelling
one ends its process group).

VNC listens on a unix socket only, without a VNC password: the gateway authenticates, and the agent, the only
client, reaches the socket through the tunnel. Xvnc cannot create it in the session's socket directory (root's
when the agent is root), so it listens in a directory of the session user's and the socket is then moved into
the socket directory, where the user can no longer swap it for a link the agent would follow.

The X display is guarded by an MIT cookie (``xauthority``): without one any local user could connect to it.
``-displayfd`` lets Xvnc take the first free display itself: no race with another session's server.

In a container (``SessionHost.worker_files`` False) the same steps run through ``<cli> exec``: the programs
come from the image (checked first, one message naming what is missing), the socket dir and the home are
bind-mounted at the same paths, the display-number pipe is passed in (``backend.fd_in_session`` says its number
inside), and ``/tmp/.X11-unix`` is the container's own (made by the backend as container root), not the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from berth.agent.backends.base import SessionBackend
from berth.errors import SetupFailed

log = logging.getLogger(__name__)

XVNC = "Xvnc"
# What the desktop runs, with the Debian package that provides it (said when an image lacks it).
PROGRAMS = {XVNC: "tigervnc-standalone-server", "openbox": "openbox", "xterm": "xterm"}
GEOMETRY = "1280x800"
DEPTH = 24
SOCKET_NAME = "vnc.sock"
X11_DIR = Path("/tmp/.X11-unix")  # the X servers' socket directory: root's, 1777, sticky
START_TIMEOUT_S = 15.0
_FAMILY_WILD = 0xFFFF  # an Xauthority entry for any host and display
_COOKIE = b"MIT-MAGIC-COOKIE-1"


def xauthority(cookie: bytes) -> bytes:
    """An Xauthority file with one MIT cookie for any display: ``-displayfd`` picks the display later."""
    def field(data: bytes) -> bytes:
        return struct.pack("!H", len(data)) + data

    return struct.pack("!H", _FAMILY_WILD) + field(b"") + field(b"") + field(_COOKIE) + field(cookie)


@dataclass(frozen=True)
class DesktopSpec:
    socket_dir: Path          # the session's socket directory (``make_socket_dir``): the VNC socket ends up here
    uid: int                  # the session user, who owns the socket Xvnc makes
    gid: int
    xauthority: Path          # the cookie file, already written as the session user
    env: dict[str, str]       # the session's environment (``login_files.session_env`` with the user's variables)
    cwd: Path                 # where the terminal starts: the workspace
    name: str                 # the desktop's name, shown by viewers
    host_x11: bool = True     # the session sees the worker's /tmp/.X11-unix (False in a container: its own)
    programs_from: str = "this worker"  # where the programs come from, for the message when some are missing
    geometry: str = GEOMETRY
    depth: int = DEPTH


class DesktopStack:
    """Start with ``start()``; ``down_reason()`` says when Xvnc has gone; ``stop()`` ends all of it."""

    def __init__(self, backend: SessionBackend, spec: DesktopSpec, log_line: Callable[[str], None]):
        self.backend, self.spec, self.log_line = backend, spec, log_line
        self.display: int | None = None
        self.tasks: dict[str, asyncio.Task] = {}
        self._stopping = False

    @property
    def socket_path(self) -> Path:
        return self.spec.socket_dir / SOCKET_NAME

    @property
    def _work_dir(self) -> Path:  # the session user's: Xvnc makes its socket here
        return self.spec.socket_dir / "desktop"

    def _xvnc_argv(self, display_fd: int) -> list[str]:
        s = self.spec
        return [XVNC, "-displayfd", str(display_fd), "-auth", str(s.xauthority), "-nolisten", "tcp",
                "-rfbport", "-1", "-rfbunixpath", str(self._work_dir / SOCKET_NAME), "-rfbunixmode", "0600",
                "-SecurityTypes", "None", "-geometry", s.geometry, "-depth", str(s.depth), "-desktop", s.name,
                "-s", "0", "-dpms",  # no screen saver, no blanking
                "-AcceptSetDesktopSize=1",  # the desktop follows the viewer's window
                "-AcceptCutText=1", "-SendCutText=1", "-SetPrimary=1", "-SendPrimary=1"]  # clipboard both ways

    def _run(self, name: str, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> asyncio.Task:
        def line(text: str) -> None:
            log.debug("%s: %s", name, text)

        task = asyncio.create_task(self.backend.run_in_session(argv, env=env, cwd=self.spec.cwd, on_line=line,
                                                               pass_fds=pass_fds))
        task.add_done_callback(lambda t: self._ended(name, t))
        self.tasks[name] = task
        return task

    def _ended(self, name: str, task: asyncio.Task) -> None:
        if self._stopping or task.cancelled():
            return
        if task.exception() is not None:
            self.log_line(f"desktop: {name} failed: {task.exception()}")
            return
        status, tail = task.result()
        self.log_line(f"desktop: {name} exited (status {status})" + (f": {tail[-1]}" if tail else ""))

    async def start(self) -> None:
        """Xvnc, then the window manager and a terminal on its display. SetupFailed (nothing left running) if
        Xvnc does not come up."""
        await self._check_programs()
        if self.spec.host_x11:
            _check_x11_dir()
        work = self._work_dir
        if work.is_symlink():
            work.unlink()
        elif work.exists():
            shutil.rmtree(work)
        work.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(work, self.spec.uid, self.spec.gid)
        try:
            self.display = await self._start_xvnc()
            self._publish_socket()
        except BaseException:
            await self.stop()
            raise
        env = {**self.spec.env, "DISPLAY": f":{self.display}", "XAUTHORITY": str(self.spec.xauthority)}
        self._run("openbox", ["openbox"], env)
        self._run("xterm", ["xterm", "-ls", "-title", "Terminal"], env)  # a login shell: ~/.bash_profile

    async def _check_programs(self) -> None:
        script = 'for p in "$@"; do command -v "$p" >/dev/null 2>&1 || echo "missing: $p"; done'
        status, tail = await self.backend.run_in_session(["/bin/sh", "-c", script, "sh", *PROGRAMS], env=self.spec.env,
                                                         cwd=self.spec.cwd)
        missing = [line.split(": ", 1)[1] for line in tail if line.startswith("missing: ")]
        if status or missing:
            what = ", ".join(f"{p} (package {PROGRAMS[p]})" for p in missing if p in PROGRAMS) or (tail or ["?"])[-1]
            raise SetupFailed(f"the desktop needs {', '.join(PROGRAMS)} and {self.spec.programs_from} lacks "
                              f"{what}: install them there")

    async def _start_xvnc(self) -> int:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb", 0))
        try:
            pass_fds = (write_fd,)
            xvnc = self._run("Xvnc", self._xvnc_argv(self.backend.fd_in_session(write_fd, pass_fds)), self.spec.env,
                             pass_fds=pass_fds)
            line = asyncio.ensure_future(reader.readline())
            done, _ = await asyncio.wait({line, xvnc}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            if line in done and line.result().strip().isdigit():
                return int(line.result())
            line.cancel()
            if xvnc.done() and not xvnc.cancelled() and xvnc.exception() is None:
                status, tail = xvnc.result()
                raise SetupFailed(f"the desktop's X server (Xvnc) exited with status {status}: " + " | ".join(tail[-5:]))
            raise SetupFailed(f"the desktop's X server (Xvnc) did not start within {START_TIMEOUT_S:g} s")
        finally:
            os.close(write_fd)  # Xvnc holds its own copy
            transport.close()

    def _publish_socket(self) -> None:
        """Move Xvnc's socket into the socket directory and check it is the session user's socket, not a link."""
        made, path = self._work_dir / SOCKET_NAME, self.socket_path
        try:
            os.replace(made, path)
            info = os.lstat(path)
        except OSError as exc:
            raise SetupFailed(f"the desktop's VNC socket is missing: {exc.strerror}") from None
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != self.spec.uid:
            path.unlink(missing_ok=True)
            raise SetupFailed("the desktop's VNC socket was replaced by something else")

    def down_reason(self) -> str | None:
        xvnc = self.tasks.get("Xvnc")
        if self._stopping or xvnc is None or not xvnc.done():
            return None
        if xvnc.cancelled() or xvnc.exception() is not None:
            return "the desktop's X server (Xvnc) ended"
        status, tail = xvnc.result()
        return f"the desktop's X server (Xvnc) exited with status {status}" + (f": {tail[-1]}" if tail else "")

    async def stop(self) -> None:
        """End the terminal, the window manager, then Xvnc; remove the sockets they leave."""
        self._stopping = True
        for name in ("xterm", "openbox", "Xvnc"):
            task = self.tasks.get(name)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.socket_path.unlink(missing_ok=True)
        shutil.rmtree(self._work_dir, ignore_errors=True)
        # a killed X server leaves its socket: the display would stay taken (a container's goes with it)
        if self.display is not None and self.spec.host_x11:
            _remove_own_socket(X11_DIR / f"X{self.display}", self.spec.uid)


def _check_x11_dir() -> None:
    """/tmp/.X11-unix must be root's (1777) before a session's X server starts: the first X server would
    otherwise make it its user's, who could then replace every later session's display socket."""
    if os.geteuid() != 0:
        return  # it is made at boot (systemd-tmpfiles); we cannot fix it anyway
    try:
        info = os.lstat(X11_DIR)
    except FileNotFoundError:
        X11_DIR.mkdir(mode=0o1777)
        os.chmod(X11_DIR, 0o1777)  # whatever our umask
        return
    if not stat.S_ISDIR(info.st_mode):
        raise SetupFailed(f"{X11_DIR} is not a directory: the desktop cannot start")
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) != 0o1777:
        os.chown(X11_DIR, 0, 0, follow_symlinks=False)
        os.chmod(X11_DIR, 0o1777)


def _remove_own_socket(path: Path, uid: int) -> None:
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == uid:
            path.unlink()
