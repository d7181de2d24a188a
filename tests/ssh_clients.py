"""Real OpenSSH clients (ssh, scp, sftp, rsync) against a per-session SSH server, for the tests that drive a server
in-process: the server runs on an event loop of its own thread (``Loop``) while the clients block."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
PW_OPTS = ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]


class Loop:
    """An event loop on its own thread: the server runs there while the tests drive blocking clients."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Login:
    """How a client reaches the session: the server's port, the session user, its password and a key pair whose
    public half is in the user's authorized_keys."""
    port: int
    user: str
    password: str
    key: Path

    def ssh_argv(self, *extra: str, password: bool = True) -> list[str]:
        auth = ["sshpass", "-p", self.password, "ssh", *SSH_OPTS, *PW_OPTS] if password else \
            ["ssh", *SSH_OPTS, "-i", str(self.key), "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes"]
        return [*auth, "-p", str(self.port), *extra, f"{self.user}@127.0.0.1"]

    def ssh(self, command: str, *extra: str, password: bool = True, timeout: float = 60) -> str:
        out = subprocess.run([*self.ssh_argv(*extra, password=password), command], capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout

    def ssh_cmd(self) -> str:  # for rsync -e and friends: sshpass + ssh, the port given
        return " ".join(["sshpass", "-p", self.password, "ssh", *SSH_OPTS, *PW_OPTS, "-p", str(self.port)])

    def scp_argv(self) -> list[str]:
        return ["sshpass", "-p", self.password, "scp", *SSH_OPTS, *PW_OPTS, "-P", str(self.port)]

    def sftp_argv(self, batch: Path) -> list[str]:  # sftp -b means BatchMode (no password prompts): the key
        return ["sftp", *SSH_OPTS, "-i", str(self.key), "-P", str(self.port), "-b", str(batch),
                f"{self.user}@127.0.0.1"]
