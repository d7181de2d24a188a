"""What OpenSSH and Dropbear share: a server run as our child process (a child subreaper), watched until it
listens, stopped with every process below it; and the small helpers their key handling uses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil

from berth.errors import SetupFailed

from .base import SshServer, free_port, kill_tree

LOG_NAME = "ssh-server.log"
START_TIMEOUT = 10.0


class ProcessSshServer(SshServer):
    """An ``SshServer`` that is a child process. Subclasses implement ``start``: pick the port
    (``listen_port``), write config and keys, then ``spawn`` the server's command line."""

    _proc: asyncio.subprocess.Process | None = None
    _stopped = False

    def listen_port(self) -> int:
        try:
            return self.spec.port or free_port(self.spec.bind_host)
        except OSError as e:
            raise SetupFailed(f"cannot listen on {self.spec.bind_host}: {e.strerror or e}") from e

    async def spawn(self, argv: list[str], name: str, port: int) -> None:
        """Start ``argv`` and wait until it listens on ``port``; SetupFailed (nothing left running) if not."""
        log_path = self.spec.run_dir / LOG_NAME
        proc = await _spawn(argv, log_path)
        try:
            await _wait_listening(proc, name, port, log_path)
        except BaseException:
            if proc.returncode is None:  # also on cancellation: never leave a stray server behind
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        self._proc, self.pids, self.port = proc, [proc.pid], port

    def children(self) -> list[psutil.Process]:
        """Every live process the server started: connections, shells, their jobs. The server is
        a child subreaper (see _spawn), so even daemonized orphans stay below it."""
        try:
            return psutil.Process(self.pids[0]).children(recursive=True) if self.pids else []
        except psutil.Error:
            return []

    def alive(self) -> bool:
        return not self._stopped and self._proc is not None and self._proc.returncode is None

    async def stop(self) -> None:
        """Stop the server and everything it started (connections, shells, their children)."""
        if self._stopped:
            return
        self._stopped = True
        assert self._proc is not None
        victims = self.children()
        try:
            victims.insert(0, psutil.Process(self._proc.pid))
        except psutil.Error:
            pass
        await kill_tree(victims)
        try:
            await asyncio.wait_for(self._proc.wait(), 2.0)  # reap our direct child
        except asyncio.TimeoutError:
            pass


async def run_helper(*argv: str) -> str:
    """Run a short helper (key generation); its stdout, or SetupFailed with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SetupFailed(f"{Path(argv[0]).name} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace")


def pubkey_line(text: str, key_type: str) -> str:
    """The ``<type> <base64>`` public key line of ``key_type`` in a key tool's output."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == key_type:
            return f"{parts[0]} {parts[1]}"
    raise SetupFailed(f"could not read the {key_type} host key")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _listening(pid: int, port: int) -> bool:
    # asks the kernel whether *this* process listens, rather than connecting: a connect can be
    # answered by something else (a transparent proxy, another server) and makes sshd fork
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.AccessDenied:  # e.g. /proc mounted hidepid: any listener on the port will do
        conns = psutil.net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


async def _wait_listening(proc: asyncio.subprocess.Process, name: str, port: int, log_path: Path) -> None:
    """Poll until the server listens on its port; SetupFailed with the server's log tail if it dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.returncode is not None:
            raise SetupFailed(f"{name} exited with status {proc.returncode}: {_log_tail(log_path)}")
        if _listening(proc.pid, port):
            return
        if time.monotonic() > deadline:
            raise SetupFailed(f"{name} did not start listening on port {port} within {START_TIMEOUT:.0f} s: {_log_tail(log_path)}")
        await asyncio.sleep(0.005)


_PR_SET_CHILD_SUBREAPER = 36
_prctl: Any = None


def _become_subreaper() -> None:
    # runs in the forked child before exec (the setting survives exec): orphans of the server's
    # descendants, like a user's daemonized jobs, are reparented to the server rather than to
    # init, so stop() finds them all below it. Only a pre-resolved C call, nothing that locks.
    if _prctl is not None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


async def _spawn(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    global _prctl
    if _prctl is None:
        import ctypes

        _prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # None off Linux: best effort
    with open(log_path, "ab") as log_file:
        # stays in our process group (start_new_session=False); stop() kills it explicitly
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=False, preexec_fn=_become_subreaper,
        )
