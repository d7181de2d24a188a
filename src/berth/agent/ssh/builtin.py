"""The built-in SSH server: asyncssh running inside the supervisor process.

Used for non-root agents, where sshd and dropbear can neither check passwords nor hand out
ptys. Everything runs as the supervisor's own user, so "login" only means: check the session
password or key, then run the shell wrapper as a child process (builtin_logins.py).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import posixpath
import signal
from typing import Callable

import asyncssh

from berth.agent.signal_defaults import undo_inherited_signal_ignores
from berth.errors import SetupFailed

from . import algorithms
from .base import SshServer, SshServerSpec, kill_tree
from .builtin_logins import Logins


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HomeSFTPServer(asyncssh.SFTPServer):
    """SFTP over the user's own view of the filesystem, relative paths starting at home."""

    def __init__(self, chan: asyncssh.SSHServerChannel, home: bytes):
        super().__init__(chan)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else posixpath.join(self._home, path)


class _Auth(asyncssh.SSHServer):
    def __init__(self, server: BuiltinServer):
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username == self._server.spec.user and self._server.keys is not None and self._conn is not None:
            self._conn.set_authorized_keys(self._server.keys)
        return True  # always require auth, even for unknown names

    def password_auth_supported(self) -> bool:
        return bool(self._server.spec.password)

    def validate_password(self, username: str, password: str) -> bool:
        spec = self._server.spec
        user_ok = hmac.compare_digest(username.encode(), spec.user.encode())
        pw_ok = hmac.compare_digest(password.encode(), spec.password.encode())
        return bool(spec.password) and user_ok and pw_ok

    def public_key_auth_supported(self) -> bool:
        return self._server.keys is not None

    def kbdint_auth_supported(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return _is_loopback(dest_host)  # direct-tcpip to this machine's loopback only

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return _is_loopback(listen_host)


class BuiltinServer(SshServer):
    kind = "builtin"

    def __init__(self, spec: SshServerSpec):
        super().__init__(spec)
        self.conns: set[asyncssh.SSHServerConnection] = set()  # kept up to date by _Auth
        self.keys = self._load_keys(spec.authorized_keys)
        self.logins = Logins(spec)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._closed = False

    @staticmethod
    def _load_keys(lines: list[str]) -> asyncssh.SSHAuthorizedKeys | None:
        good = []
        for line in lines:
            try:
                asyncssh.import_authorized_keys(line)  # skip a bad line instead of refusing all keys
                good.append(line.strip())
            except (ValueError, asyncssh.KeyImportError):
                continue
        return asyncssh.import_authorized_keys("\n".join(good) + "\n") if good else None

    def alive(self) -> bool:
        return not self._closed and self._acceptor is not None

    def notify_terminals(self, text: str) -> int:
        """Write a line to every open pty channel (the idle warning); how many got it. Pipe channels
        (scp, sftp, VS Code) carry data streams and are left alone."""
        line = f"\r\n\a*** berth: {text} ***\r\n".encode()
        sent = 0
        for process in list(self.logins.terminals):
            try:
                process.stdout.write(line)
                sent += 1
            except Exception:  # channel closing
                pass
        return sent

    async def start(self, log: Callable[[str], None]) -> None:
        undo_inherited_signal_ignores()
        spec = self.spec
        key_path = spec.run_dir / "ssh_host_ed25519_key"
        if key_path.exists():  # reuse keeps the host key stable across restarts
            key = asyncssh.read_private_key(key_path)
        else:
            key = asyncssh.generate_private_key("ssh-ed25519")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
        host_key = " ".join(key.export_public_key("openssh").decode().split()[:2])
        home = os.fsencode(str(spec.home))
        algorithms.refuse_sha1_rsa_user_signatures()
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: _Auth(self), spec.bind_host, spec.port or 0,
                server_host_keys=[key], process_factory=self.logins.serve,
                sftp_factory=lambda chan: _HomeSFTPServer(chan, home),
                encoding=None, line_editor=False, agent_forwarding=False, x11_forwarding=False,
                allow_scp=False, keepalive_interval=30,
                **algorithms.asyncssh_options(),  # the modern set; the host key is ed25519 only
            )
        except OSError as e:
            raise SetupFailed(f"built-in SSH server could not listen on {spec.bind_host}:{spec.port}: {e}") from e
        self.port, self.host_key, self.host_keys = self._acceptor.get_port(), host_key, [host_key]
        log(f"built-in SSH server listening on {spec.bind_host}:{self.port}")

    async def stop(self) -> None:
        """Stop listening, hang up every login (and what it left running), close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._acceptor is not None:
            self._acceptor.close()
        await kill_tree(self.logins.processes(), signal.SIGHUP)  # what a dropped connection would send
        for conn in list(self.conns):
            conn.close()
        waits = [asyncio.ensure_future(c.wait_closed()) for c in list(self.conns)]
        if self._acceptor is not None:
            waits.append(asyncio.ensure_future(self._acceptor.wait_closed()))
        if waits:
            await asyncio.wait(waits, timeout=2.0)
