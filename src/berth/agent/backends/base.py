"""The session backend plugin interface.

A backend decides where a session's processes run and who they run as.

Required methods:
    ``prepare()``   create the session's identity and home (a system user, a container...); return a ``SessionHost``
    ``run_in_session()``  run a process in the session as its user (setup steps: venv, packages, git, init
                          script); (status, last output lines), the output streamed to ``on_line``
    ``process_scope()``   which processes are the session's (``berth.agent.proctable.Scope``): what sampling
                          counts and what teardown ends
    ``teardown()``  end every process of the session and remove what ``prepare`` made, except the home/workspace
    ``identity()``  the uid/gid, as seen on the worker, that work done on the session's behalf runs as
    ``clean_up_orphan()``  (classmethod) end what a dead supervisor left, given only the session id and its dir

Optional:
    ``describe()``        one console line saying what isolation the session gets
    ``down_reason()``     (async) why the session's environment stopped serving (a container that died), or None;
                          the supervisor checks it every second, as the app's, and fails the session with it
    ``ssh_server()``      the SSH server kind (``berth.agent.ssh.KINDS``) this backend's sessions need, with its
                          options, or None (the default): the worker's usual choice (``berth.agent.ssh.choose_kind``)
    ``fd_in_session()``   the number a command started by ``run_in_session`` sees one of its ``pass_fds`` as
                          (default: the same; a container renumbers them from 3)
    ``programs_from()``   where the session's programs come from, as messages name it ("this worker", an image)
    ``net_counters()``    (received, sent) bytes of the session's own network namespace, loopback excluded, or None
                          (the default: it shares the worker's network, and its sockets tell its traffic); called
                          at each metrics sample, so it must be cheap (``berth.agent.netns``)
    ``act_as_session()``  run a file task (``berth.agent.as_session.helper.TASKS``) as ``identity()``: restore, snapshot,
                          login files, helpers in the home. Never do such work as root on paths the user controls.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.agent.as_session import Identity, run_task
from berth.agent.proctable import Scope
from berth.agent.run_as import RunAs


@dataclass
class SessionHost:
    run_as: RunAs           # who the session's processes run as
    home: Path              # the session's HOME
    system_user: bool       # a per-session system user was created (root agents)
    socket_dir: Path        # where the supervisor's sockets for the session go: a directory the user cannot swap
    socket_gid: int | None  # the group allowed to connect to them (None: only the supervisor's own user)
    setup_dir: Path | None = None  # where setup steps put private files the session reads (a path the session
                                   # sees as the supervisor does); None: the system temp dir
    worker_files: bool = True  # the session sees the worker's files (False in a container: host paths in the
                               # operator's settings, such as local wheel dirs, mean nothing there)


def make_socket_dir(path: Path, gid: int | None) -> Path:
    """The session's socket directory, made once and shared by whatever the supervisor serves there (``berth-sync``,
    the desktop's VNC socket). As root: root's, 0710 with the session's group (the user may connect, never swap a
    socket for a link); else the agent's own, 0700 (`gid`: ``SessionHost.socket_gid``). Idempotent."""
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gid is not None:  # session users traverse it to their own socket dir, whatever the agent's umask
        os.chmod(path.parent, 0o755)
    path.mkdir(mode=0o700, exist_ok=True)
    if gid is not None:
        os.chown(path, 0, gid)
        os.chmod(path, 0o710)
    else:
        os.chmod(path, 0o700)
    return path


class SessionBackend(abc.ABC):
    name: str = "abstract"

    def __init__(self, session_id: str, session_dir: Path, *, homes_dir: Path, runtime_dir: Path, password: str):
        self.session_id = session_id
        self.session_dir = session_dir
        self.homes_dir = homes_dir
        self.runtime_dir = runtime_dir  # root's directory for per-session sockets (AgentSettings.runtime_dir)
        self.password = password
        self.host: SessionHost | None = None  # set by prepare()

    @abc.abstractmethod
    async def prepare(self) -> SessionHost: ...

    @abc.abstractmethod
    async def run_in_session(self, argv: list[str], *, env: dict[str, str], cwd: str | Path,
                             stdin: bytes | None = None, on_line: Callable[[str], None] | None = None,
                             pass_fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
        """Run argv (no shell) in the session as its user (after prepare); stdout and stderr merged, streamed
        to on_line. Returns (exit status, last lines). Cancelling it ends the process and its group."""

    @abc.abstractmethod
    def process_scope(self) -> Scope:
        """The session's processes (after prepare), for sampling and teardown."""

    @abc.abstractmethod
    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        """Return how many leftover processes had to be killed. `host` is None when prepare() did not finish
        (failed or cancelled): whatever it had made by then is removed all the same."""

    @abc.abstractmethod
    def identity(self) -> Identity:
        """Who file work on the session's behalf runs as (after prepare)."""

    @classmethod
    @abc.abstractmethod
    async def clean_up_orphan(cls, session_id: str, session_dir: Path, *, runtime_dir: Path) -> int:
        """After a supervisor died: end the session's processes and remove what prepare() made (the agent
        calls this, then reports the session failed). Returns how many processes were killed."""

    async def act_as_session(self, task: str, args: dict[str, Any], **kw: Any) -> Any:
        """Run `task` with the session's identity; see ``berth.agent.as_session.run_task`` for `kw`."""
        return await run_task(self.identity(), task, args, **kw)

    def describe(self) -> str:
        return f"{self.name} backend"

    async def down_reason(self) -> str | None:
        return None

    def ssh_server(self) -> tuple[str, dict[str, str]] | None:
        return None

    def fd_in_session(self, fd: int, pass_fds: tuple[int, ...]) -> int:
        return fd

    def programs_from(self) -> str:
        return "this worker"

    def net_counters(self) -> tuple[int, int] | None:
        return None
