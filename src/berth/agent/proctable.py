"""Which processes belong to a session, and their counters, read straight from /proc.

This is the one definition of a session's processes: sampling (``monitor.SessionSampler``) counts them and
teardown (``processes.kill_scope``) ends them, both through ``ProcessTable``; a backend says what its
sessions' scope is (``SessionBackend.process_scope``).

Sampling runs every 2 s in every supervisor, so it has to be cheap: each scan lists /proc, reads
``stat`` (and ``io``) of the session's own processes only, and inspects a pid it has not seen before
once (uid, parent, environment). Verdicts are cached by (pid, start time). A pid that was younger than
``SETTLE_S`` when inspected is inspected again on the next scan: between fork and exec a child still has
its parent's uid and environment (sshd forks as root, then drops to the session user).

A process belongs to the session when any of these holds:
  * its real or effective uid is one of the scope's uids (root agents: the per-session ``berth-<id>`` user;
    ``sudo`` run by it has the user's real uid), or lies in one of its ``uid_ranges`` (a container's user
    namespace: every process in it runs as a host id of its range);
  * its parent belongs (so the tree below the supervisor or a session shell belongs, ``sudo`` included);
  * its environment has ``BERTH_SESSION_ID=<id>`` (the login wrapper sets it);
  * its parent is the scope's ``root_pid`` (non-root agents: the supervisor), which itself is not counted.
Zombies are listed (their parent's figures need them) but are never signalled (``processes``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from berth.agent.login_files import SESSION_ENV_VAR

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETTLE_S = 2.0
PTS_MAJORS = range(136, 144)  # UNIX98 pty slaves: /dev/pts/N with N = (major - 136) * 256 + minor


@dataclass(frozen=True)
class Scope:
    """The rules' parameters (see the module docstring). ``root_pid`` names the process the scope is seen from
    (the supervisor, whose children are the session's load): teardown, which may run elsewhere (the agent, a
    test), does not follow it."""

    session_id: str | None = None
    uids: frozenset[int] = frozenset()
    root_pid: int | None = None
    exclude: frozenset[int] = frozenset()
    uid_ranges: tuple[range, ...] = ()

    @property
    def marker(self) -> bytes | None:
        return f"\0{SESSION_ENV_VAR}={self.session_id}\0".encode() if self.session_id else None


@dataclass(slots=True)
class ProcStat:
    pid: int
    ppid: int
    state: str
    tty_nr: int
    own_ticks: int  # utime + stime
    children_ticks: int  # cutime + cstime: CPU of children this process has reaped
    start: int  # ticks after boot; with the pid, identifies the process
    rss_bytes: int

    @property
    def total_ticks(self) -> int:
        return self.own_ticks + self.children_ticks

    @property
    def pts(self) -> str | None:
        """/dev/pts/N when the controlling terminal is a pty slave."""
        major, minor = (self.tty_nr >> 8) & 0xFFF, (self.tty_nr & 0xFF) | ((self.tty_nr >> 12) & 0xFFF00)
        return f"/dev/pts/{(major - 136) * 256 + minor}" if major in PTS_MAJORS else None


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return ProcStat(pid=pid, ppid=int(fields[1]), state=fields[0].decode(), tty_nr=int(fields[4]),
                        own_ticks=int(fields[11]) + int(fields[12]), children_ticks=int(fields[13]) + int(fields[14]),
                        start=int(fields[19]), rss_bytes=int(fields[21]) * PAGE_SIZE)
    except (IndexError, ValueError):
        return None


def read_io(pid: int) -> tuple[int, int] | None:
    """(read_bytes, write_bytes): what the process caused to be read from / sent to storage."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:  # not ours to read (another user's setuid process), or gone
        return None
    read = write = None
    for line in lines:
        if line.startswith(b"read_bytes:"):
            read = int(line[11:])
        elif line.startswith(b"write_bytes:"):
            write = int(line[12:])
    return (read, write) if read is not None and write is not None else None


def read_uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    fields = line.split()
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in b"\0" + f.read()
    except OSError:  # another user's process (non-root agents), or gone
        return False


def uptime_ticks() -> int:
    with open("/proc/uptime", "rb") as f:
        return int(float(f.read().split()[0]) * CLK_TCK)


@dataclass(slots=True)
class _Verdict:
    start: int
    member: bool
    settled: bool


class ProcessTable:
    """Scans /proc; remembers per pid whether it belongs to the scope."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self.ignored: set[int] = set()  # the supervisor's own helpers running as the session user, while they run
        self._verdicts: dict[int, _Verdict] = {}
        self._fresh: dict[int, ProcStat] = {}  # stats read while inspecting during this scan

    def ignore(self, pid: int) -> None:
        self.ignored.add(pid)
        self._verdicts.pop(pid, None)  # a verdict cached before it was ignored

    def scan(self) -> tuple[dict[int, ProcStat], int]:
        """The session's live processes with fresh counters, and the boot-relative time of the scan (ticks)."""
        now = uptime_ticks()
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        alive = set(pids)
        for pid in [p for p in self._verdicts if p not in alive]:
            del self._verdicts[pid]
        self._alive, self._now, self._fresh = alive, now, {}
        members: dict[int, ProcStat] = {}
        for pid in pids:
            verdict = self._verdict(pid)
            if verdict is None or not verdict.member:
                continue
            stat = self._fresh.get(pid) or read_stat(pid)
            if stat is None:
                continue
            if stat.start != verdict.start:  # the pid was reused: judge the new process
                del self._verdicts[pid]
                verdict = self._verdict(pid)
                stat = self._fresh.get(pid) or read_stat(pid)
                if verdict is None or not verdict.member or stat is None:
                    continue
            members[pid] = stat
        self._fresh = {}
        return members, now

    def _verdict(self, pid: int, depth: int = 0) -> _Verdict | None:
        verdict = self._verdicts.get(pid)
        if verdict is not None and verdict.settled:
            return verdict
        if pid not in self._alive or depth > 64:
            return None
        stat = self._fresh.get(pid) or read_stat(pid)
        if stat is None:
            return None
        self._fresh[pid] = stat
        verdict = _Verdict(stat.start, self._belongs(stat, depth), self._now - stat.start >= SETTLE_S * CLK_TCK)
        self._verdicts[pid] = verdict
        return verdict

    def _belongs(self, stat: ProcStat, depth: int) -> bool:
        scope = self.scope
        if stat.pid in scope.exclude or stat.pid in self.ignored or stat.pid == scope.root_pid or stat.pid <= 1:
            return False
        if scope.uids or scope.uid_ranges:
            uids = read_uids(stat.pid) or ()
            if not scope.uids.isdisjoint(uids) or any(uid in r for r in scope.uid_ranges for uid in uids):
                return True
        if scope.root_pid is not None and stat.ppid == scope.root_pid:
            return True
        if stat.ppid > 1:
            parent = self._verdict(stat.ppid, depth + 1)
            if parent is not None and parent.member:
                return True
        return scope.marker is not None and has_marker(stat.pid, scope.marker)
