"""TCP sockets of the host as ``ss -tinHe`` reports them: per-socket byte counters, owner uid, inode.

Two readers share one table (one ``ss`` run per poll interval, ~15 ms of CPU):
  * ``SessionNetwork``: a session's own network traffic, i.e. the bytes received and acknowledged on the
    TCP sockets its processes hold (by owner uid for a per-session user, else by socket inode), loopback
    peers excluded. The process backend has no network namespace, so this is how its traffic is told
    from the rest of the worker's. UDP is not counted, nor the remainder of a connection that opened
    and closed between two polls.
  * ``SocketActivity`` (``monitor.py``): bytes clients sent to the SSH server's port (an input signal).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass

MB = 1_000_000
_FIELDS = re.compile(r"\b(bytes_received|bytes_acked|ino|uid):(\d+)")


@dataclass(frozen=True, slots=True)
class TcpSocket:
    local: str
    peer: str
    ino: int
    uid: int
    received: int
    acked: int

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1])

    @property
    def loopback_peer(self) -> bool:
        host = self.peer.rsplit(":", 1)[0].strip("[]")
        return host.startswith(("127.", "::ffff:127.")) or host == "::1"


def parse_ss(text: str) -> list[TcpSocket]:
    """`ss -tinHe` output: a line per socket ([state,] queues, local, peer, ino:, uid: when not root), then its
    tcp_info. Sockets without an inode (TIME-WAIT) are left out: nobody holds them."""
    sockets: list[TcpSocket] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if head is None:
            return
        cols = head if head and head[0].isdigit() else head[1:]  # a State column leads when several states match
        if len(cols) >= 4 and ":" in cols[2] and fields.get("ino"):  # ino 0: TIME-WAIT, no owner any more
            sockets.append(TcpSocket(cols[2], cols[3], fields["ino"], fields.get("uid", 0),
                                     fields.get("bytes_received", 0), fields.get("bytes_acked", 0)))

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            close()
            head, fields = line.split(), {}
        fields.update((k, int(v)) for k, v in _FIELDS.findall(line))
    close()
    return sockets


class TcpTable:
    """The host's connected TCP sockets, read at most every ``min_interval_s``."""

    def __init__(self, min_interval_s: float = 10.0):
        self.min_interval_s = min_interval_s
        self.ss = shutil.which("ss") or ("/usr/bin/ss" if os.path.exists("/usr/bin/ss") else None)
        self._read_at = float("-inf")
        self._sockets: list[TcpSocket] | None = None

    def poll(self) -> tuple[list[TcpSocket] | None, float, bool]:
        """(sockets or None when `ss` cannot run, when they were read, whether this call read them)."""
        if self.ss is None:
            return None, self._read_at, False
        if time.monotonic() - self._read_at < self.min_interval_s:
            return self._sockets, self._read_at, False
        self._read_at = time.monotonic()
        try:
            out = subprocess.run([self.ss, "-tinHe", "state", "connected"], capture_output=True, text=True, timeout=5)
            self._sockets = parse_ss(out.stdout) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            self._sockets = None
        return self._sockets, self._read_at, True


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """Inodes of the sockets these processes hold open (those of other users' processes need root)."""
    found: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


class SessionNetwork:
    """A session's own TCP traffic in MB/s, averaged over each poll interval of the shared table."""

    def __init__(self, table: TcpTable, uid: int | None):
        self.table, self.uid = table, uid
        self._seen: dict[tuple[str, str, int], tuple[int, int]] | None = None
        self._at = 0.0
        self._rates: tuple[float | None, float | None] = (None, None)

    @property
    def available(self) -> bool:
        return self.table.ss is not None

    def rates(self, pids: Iterable[int]) -> tuple[float | None, float | None]:
        sockets, read_at, fresh = self.table.poll()
        if sockets is None:
            return None, None
        if not fresh and self._seen is not None and read_at == self._at:
            return self._rates  # between polls: the last interval's average
        inodes = socket_inodes(pids) if self.uid is None else set()
        current = {(s.local, s.peer, s.ino): (s.received, s.acked) for s in sockets
                   if not s.loopback_peer and (s.uid == self.uid if self.uid is not None else s.ino in inodes)}
        if self._seen is not None and read_at > self._at:
            rx = tx = 0
            for key, (received, acked) in current.items():
                before = self._seen.get(key)
                if before is None or received < before[0] or acked < before[1]:
                    before = (0, 0)  # opened since the last poll: all of its bytes are new
                rx, tx = rx + received - before[0], tx + acked - before[1]
            dt = read_at - self._at
            self._rates = (rx / MB / dt, tx / MB / dt)
        self._seen, self._at = current, read_at
        return self._rates
