"""What every per-session SSH server shares: the spec it starts from, the abstract ``SshServer``, and helpers.

No module here imports a server kind: the kinds import this one, and ``berth.agent.ssh`` picks them by name.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import stat
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from berth.errors import SetupFailed

KILL_GRACE = 1.0


@dataclass
class SshServerSpec:
    kind: str  # a name in berth.agent.ssh.KINDS: "openssh", "dropbear", "builtin" or "container"
    run_dir: Path
    home: Path
    user: str
    password: str
    authorized_keys: list[str]
    shell_wrapper: Path
    bind_host: str = "0.0.0.0"
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    on_input: Callable[[], None] | None = None  # built-in server only: a client sent data (idle detection)
    # True: the caller writes ~/.ssh/authorized_keys as the session user (a supervisor does, with the login
    # files); False (a server started on its own): written here by write_authorized_keys, never through a link.
    keys_written_by_caller: bool = False
    # what a kind needs beyond the above (the container kind: "container", its name, and "cli"); from the
    # backend (SessionBackend.ssh_server)
    options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print the password
        return f"SshServerSpec(kind={self.kind!r}, user={self.user!r}, run_dir={str(self.run_dir)!r}, port={self.port!r})"


class SshServer(ABC):
    """A per-session SSH server: its own config, host keys (in ``spec.run_dir``) and port.

    Every login runs ``spec.shell_wrapper`` as a forced command. Made by ``berth.agent.ssh.start_ssh_server``,
    which prepares the run dir and authorized_keys, then calls ``start``.

    Required (abstract):
      ``kind``                        class attribute: the name in ``berth.agent.ssh.KINDS``
      ``async start(log)``            listen; set ``port``, ``host_key`` and ``host_keys``; ``log`` gets
                                      console lines (never the password). SetupFailed if it cannot, leaving
                                      nothing running
      ``alive() -> bool``             still serving (False once stopped)
      ``async stop()``                stop the server and everything it started (connections, shells and
                                      their children); idempotent

    Optional (defaults here):
      ``notify_terminals(text) -> int``   write a notice to open terminals the agent cannot reach through a
                                          tty device; how many got it. Default 0: the server's ptys are real
                                          devices (the watchdog writes to those itself)
      ``children() -> list[Process]``     every live process the server started. Default []
      ``failure``                         why it stopped serving, when it knows (said when ``alive()`` turns
                                          False). Default None: "exited unexpectedly"
      ``pids``                            the server's own processes. Default [] (in-process servers)

    Provided: ``spec``, ``port``, ``host_key`` (ed25519: the one to pin), ``host_keys`` (every key it may
    present, for known_hosts), ``host_key_fingerprint``.
    """

    kind: str

    def __init__(self, spec: SshServerSpec):
        self.spec = spec
        self.port = 0
        self.host_key = ""
        self.host_keys: list[str] = []
        self.pids: list[int] = []
        self.failure: str | None = None

    def __repr__(self) -> str:
        return f"SshServer(kind={self.kind!r}, port={self.port}, pids={self.pids})"

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_key)

    @abstractmethod
    async def start(self, log: Callable[[str], None]) -> None: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def stop(self) -> None: ...

    def notify_terminals(self, text: str) -> int:
        return 0

    def children(self) -> list[psutil.Process]:
        return []


def fingerprint(public_key_line: str) -> str:
    """``SHA256:<base64 without padding>`` of a public key line, as ``ssh-keygen -l`` prints it."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise ValueError("not a public key line")
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port(host: str = "0.0.0.0") -> int:
    """A TCP port that is free right now on ``host`` (the usual small race applies)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_authorized_keys(home: Path, keys: list[str], uid: int | None, gid: int | None) -> Path:
    """Write ``home/.ssh/authorized_keys`` (700/600, owned by uid/gid).

    This may run as root inside a directory the user controls, so nothing there is written
    through: a fresh temp file (O_EXCL|O_NOFOLLOW) is renamed over the old file, which replaces
    a planted symlink or hard link instead of following it."""
    uid_, gid_ = (-1 if uid is None else uid), (-1 if gid is None else gid)
    own = uid is not None or gid is not None
    try:
        if not home.exists():
            home.mkdir(parents=True, mode=0o755)
            if own:
                os.chown(home, uid_, gid_)
        ssh_dir = home / ".ssh"
        if not ssh_dir.is_symlink() and not ssh_dir.exists():
            os.mkdir(ssh_dir, 0o700)
        if not stat.S_ISDIR(os.lstat(ssh_dir).st_mode):
            raise SetupFailed(f"{ssh_dir} is not a directory")
        os.chmod(ssh_dir, 0o700)
        if own:
            os.chown(ssh_dir, uid_, gid_)
        path = ssh_dir / "authorized_keys"
        tmp = ssh_dir / f".authorized_keys.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            if own:
                os.fchown(fd, uid_, gid_)
            f.write("".join(k.strip() + "\n" for k in keys if k.strip()).encode())
        os.replace(tmp, path)
    except OSError as e:
        raise SetupFailed(f"cannot write {home}/.ssh/authorized_keys: {e.strerror or e}") from e
    return path


async def prepare(spec: SshServerSpec) -> None:
    """What every kind needs before it starts: a private run dir and (unless the caller writes them) authorized_keys."""
    if not spec.shell_wrapper.is_absolute():
        raise SetupFailed(f"shell wrapper must be an absolute path: {spec.shell_wrapper}")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.run_dir, 0o700)  # keys live here
    if not spec.keys_written_by_caller:
        write_authorized_keys(spec.home, spec.authorized_keys, spec.uid, spec.gid)


def authorized_keys_text(keys: list[str]) -> str:
    return "".join(k.strip() + "\n" for k in keys if k.strip())


def _freeze(roots: list[psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP ``roots`` and all their descendants, rescanning the children of each newly stopped
    process until none appear: a stopped process cannot fork, so nothing escapes the kill."""
    frozen: dict[int, psutil.Process] = {}
    todo = list(roots)
    while todo:
        new = []
        for p in todo:
            if p.pid in frozen or p.pid == os.getpid():
                continue
            try:
                p.suspend()
            except psutil.Error:
                continue
            frozen[p.pid] = p
            new.append(p)
        todo = []
        for p in new:
            try:
                todo += p.children(recursive=True)
            except psutil.Error:
                pass
    return list(frozen.values())


async def kill_tree(roots: list[psutil.Process], sig: int = signal.SIGTERM, grace: float = KILL_GRACE) -> None:
    """Freeze ``roots`` and their descendants, send ``sig``, let them run, and SIGKILL whatever is
    left after ``grace`` s (zombies count as gone)."""
    procs = _freeze(roots)
    for action in (lambda p: p.send_signal(sig), lambda p: p.resume()):
        for p in procs:
            try:
                action(p)
            except psutil.Error:
                pass
    deadline = time.monotonic() + grace
    left = procs
    while left:
        left = [p for p in left if _alive(p)]
        if not left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.02)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
