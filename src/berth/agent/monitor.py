"""Resource sampling on the worker: one session's processes (``SessionSampler``) or the whole host (``HostSampler``).

Session figures (see ``berth.metrics`` for units):
  * CPU: "% of one core" summed over the session's processes, so one busy core reads 100 on a 2-core
    laptop and on a 64-core server alike: an idle rule of "cpu > 10" means "a tenth of a core busy",
    which is what tells a working session from an idle one, whatever the machine's size. The CPU of
    processes that lived and ended between two samples is counted too: it shows up in the reaping
    parent's cutime/cstime (a short compiler run under `make` is not lost).
  * memory: RSS summed; disk: /proc/PID/io read_bytes/write_bytes rates (storage I/O, not page cache hits).
  * network: the session's own TCP traffic (``netsockets.SessionNetwork``: bytes on the sockets its
    processes hold, loopback peers excluded, averaged over 10 s), ``network_scope: "session"``; a session
    with a network namespace of its own (a container) adds its interfaces' counters (``SessionBackend.net_counters``,
    ``netns``): the worker's ``ss`` sees only the sockets it holds in the worker's namespace (SSH connections
    passed in); where ``ss`` cannot run, the host's interfaces (loopback excluded) and ``network_scope: "host"``.
  * GPU: NVML per device, plus the session's share where the driver reports per-process use.

User input (``last_input_at``), the evidence that a person is there:
  (a) the atime of each pty the session's processes have as controlling terminal: the kernel updates it
      when a process reads input from the terminal, i.e. on keystrokes (coarsely: at most every 8 s);
  (b) ``note_input()``, a hook for the built-in SSH server, called when a client sends channel data;
  (c) bytes received on the SSH server's port (``ss``), for non-pty connections such as VS Code Remote;
      deltas below ``socket_threshold_bytes`` per poll (keepalives) do not count;
  (d) the session's input stamp (``session_services.last_input``): the agent touches it when a viewer's
      keyboard or pointer input crosses the tunnel (``watch_input_stamp``); its source reads "desktop".
An SSH connection left open with no input moves none of these.

Cost: a sample reads /proc/PID/{stat,io} of the session's processes and inspects each new pid once; a
session of a few processes costs ~0.1 % of a core at one sample per 2 s, ``ss`` (network and input (c),
one run every 10 s) another ~0.15 % (tests/unit/test_monitor.py, bench/metrics.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import psutil

from berth.metrics import MetricSample

from .gpus import GpuReader, summarize
from .netsockets import SessionNetwork, TcpTable
from .proctable import CLK_TCK, ProcessTable, ProcStat, Scope, read_io
from .session_services import last_input

MB = 1_000_000
DEFAULT_INTERVAL_S = 2.0
SOCKET_INPUT_BYTES = 2048  # per poll: an OpenSSH keepalive is ~100 bytes, typing a word is more
_gpu_reader: GpuReader | None = None


def shared_gpu_reader() -> GpuReader:
    """NVML is initialised once per process, whatever the number of samplers."""
    global _gpu_reader
    if _gpu_reader is None:
        _gpu_reader = GpuReader()
    return _gpu_reader


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _host_counters() -> tuple[int, int]:
    rx = tx = 0
    for name, c in psutil.net_io_counters(pernic=True).items():
        if name != "lo":
            rx, tx = rx + c.bytes_recv, tx + c.bytes_sent
    return rx, tx


class NetCounter:
    """Network rates from byte counters: the host's interfaces but loopback, or `read`'s (received, sent) totals,
    None while it has none (``SessionBackend.net_counters``: a session's own network namespace)."""

    def __init__(self, read: Callable[[], tuple[int, int] | None] = _host_counters) -> None:
        self._read = read
        self.last = read()
        self._t = time.monotonic()

    def rates(self) -> tuple[float | None, float | None]:
        now, t = self._read(), time.monotonic()
        last, dt = self.last, t - self._t
        self.last, self._t = now, t
        if now is None or last is None or dt <= 0.05:
            return None, None
        (rx, tx), (prx, ptx) = now, last
        return max(0, rx - prx) / MB / dt, max(0, tx - ptx) / MB / dt  # max: counters reset when a NIC goes away


class SocketActivity:
    """Bytes clients sent to the SSH server's ports (optional input signal (c)), from the shared TCP table
    (``netsockets.TcpTable``: one ``ss`` run per poll interval; the input window of the idle rules, 60 s,
    is much longer than its 10 s)."""

    def __init__(self, ports: Iterable[int], threshold_bytes: int = SOCKET_INPUT_BYTES, min_interval_s: float = 10.0,
                 table: TcpTable | None = None):
        self.ports = frozenset(ports)
        self.threshold = threshold_bytes
        self.table = table or TcpTable(min_interval_s)
        self._seen: dict[tuple[str, str], int] | None = None
        self._read_at = float("-inf")
        self.last_at: float | None = None

    @property
    def min_interval_s(self) -> float:
        return self.table.min_interval_s

    def poll(self) -> float | None:
        """Time of the last poll that saw more than the threshold arrive; None when never (or no `ss`)."""
        if not self.ports:
            return self.last_at
        sockets, read_at, _fresh = self.table.poll()
        if sockets is None or read_at == self._read_at:
            return self.last_at
        self._read_at = read_at
        current = {(s.local, s.peer): s.received for s in sockets if s.local_port in self.ports}
        if self._seen is not None:  # the first poll only learns the baseline
            received = sum(n - self._seen.get(key, 0) for key, n in current.items() if n >= self._seen.get(key, 0))
            if received >= self.threshold:
                self.last_at = time.time()
        self._seen = current
        return self.last_at


def _same_mount_namespace(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == _OWN_MOUNT_NS
    except OSError:
        return False


try:
    _OWN_MOUNT_NS = os.stat("/proc/self/ns/mnt").st_ino
except OSError:  # no /proc/self/ns (not Linux): no pty is trusted
    _OWN_MOUNT_NS = -1


class SessionSampler:
    """Samples one session's processes (``proctable.Scope``). Not thread-safe except ``note_input`` (call it
    from anywhere).

    The supervisor passes its backend's ``process_scope()`` (``for_scope``). Tests and benchmarks may give the
    scope's parts: ``session_id`` (its ``BERTH_SESSION_ID`` marker), ``uid`` (a per-session user), ``root_pid``
    (its descendants count, itself not). The sampling process itself never counts. ``net_counters``: the
    backend's ``net_counters`` (a session with a network namespace of its own), read while it answers.
    """

    def __init__(self, session_id: str | None = None, *, uid: int | None = None, root_pid: int | None = None,
                 scope: Scope | None = None, exclude_pids: Iterable[int] = (), input_ports: Iterable[int] = (),
                 gpus: GpuReader | None | bool = True, socket_threshold_bytes: int = SOCKET_INPUT_BYTES,
                 socket_interval_s: float = 10.0, net_counters: Callable[[], tuple[int, int] | None] | None = None):
        if scope is None:
            scope = Scope(session_id=session_id, uids=frozenset({uid}) if uid is not None else frozenset(),
                          root_pid=root_pid)
        scope = dataclasses.replace(scope, exclude=frozenset({*scope.exclude, os.getpid(), *exclude_pids}))
        self.session_id = scope.session_id
        self.table = ProcessTable(scope)
        self.gpus = shared_gpu_reader() if gpus is True else (gpus or None)
        self.tcp = TcpTable(socket_interval_s)
        self.sockets = SocketActivity(input_ports, socket_threshold_bytes, table=self.tcp)
        # Sockets are the session's by owner when it has a user of its own, else by the inodes its processes hold.
        self.session_net = SessionNetwork(self.tcp, next(iter(scope.uids)) if len(scope.uids) == 1 else None)
        self._net = NetCounter()  # the host's, when `ss` is missing
        self._own_net = NetCounter(net_counters) if net_counters is not None else None
        self._input_at: float | None = None
        self._stamp_dir: Path | None = None
        self._ttys: set[str] = set()
        self._pids: set[int] = set()
        self._prev: dict[int, ProcStat] = {}
        self._prev_io: dict[int, tuple[int, int]] = {}
        self._prev_t = time.monotonic()
        self._prev_ticks = 0
        self._baseline()

    @classmethod
    def for_scope(cls, scope: Scope, **kw) -> SessionSampler:
        """What the supervisor uses: ``SessionSampler.for_scope(backend.process_scope())``."""
        return cls(scope=scope, **kw)

    # --- hooks and accessors ----------------------------------------------------------------------
    def ignore(self, pid: int) -> None:
        """Leave `pid` out of the session's figures (a helper working for the supervisor as the session user)."""
        self.table.ignore(pid)

    def unignore(self, pid: int) -> None:
        self.table.ignored.discard(pid)

    def note_input(self) -> None:
        """Input hook (b): the built-in SSH server calls this when a client sends channel data."""
        self._input_at = time.time()

    def set_input_ports(self, ports: Iterable[int]) -> None:
        """Watch these ports for input (c) from now on (the SSH server's port is known after setup)."""
        self.sockets = SocketActivity(ports, self.sockets.threshold, table=self.tcp)

    @property
    def pids(self) -> set[int]:
        """The session's processes as of the last sample."""
        return set(self._pids)

    def ttys(self) -> list[str]:
        """The pty devices (/dev/pts/N) the session's processes have as controlling terminal, as of the last sample."""
        return sorted(self._ttys)

    def watch_input_stamp(self, session_dir: Path) -> None:
        """Input (d) from now on: the stamp the agent touches in `session_dir` for tunnel input."""
        self._stamp_dir = session_dir

    def last_input_at(self) -> float | None:
        """Epoch seconds of the last sign of user input (see the module docstring), or None."""
        return self.last_input()[0]

    def last_input(self) -> tuple[float | None, str]:
        """(epoch seconds, source) of the last sign of user input: "ssh" (a-c) or "desktop" (d)."""
        times = [t for t in (self._input_at, self.sockets.poll()) if t is not None]
        for path in self._ttys:
            try:
                times.append(os.stat(path).st_atime)
            except OSError:  # the terminal closed since the last sample
                pass
        ssh = max(times) if times else None
        stamp = last_input(self._stamp_dir) if self._stamp_dir is not None else None
        if stamp is not None and (ssh is None or stamp > ssh):
            return stamp, "desktop"
        return ssh, "ssh"

    # --- sampling ---------------------------------------------------------------------------------
    def _baseline(self) -> None:
        members, ticks = self.table.scan()
        self._remember(members, ticks, time.monotonic(), {pid: io for pid in members if (io := read_io(pid))})

    def _remember(self, members: dict[int, ProcStat], ticks: int, t: float, io: dict[int, tuple[int, int]]) -> None:
        self._prev, self._prev_io, self._prev_ticks, self._prev_t = members, io, ticks, t
        self._pids = set(members)
        # A pty number means /dev/pts/N only in our own mount namespace: a container has its own devpts, and its
        # /dev/pts/3 is not ours (warning or reading "ours" would reach somebody else's terminal).
        self._ttys = {p for pid, st in members.items() if (p := st.pts) and _same_mount_namespace(pid)}

    def _cpu_ticks(self, members: dict[int, ProcStat]) -> int:
        deltas: dict[int, int] = {}
        for pid, st in members.items():
            prev = self._prev.get(pid)
            if prev is not None and prev.start == st.start:
                deltas[pid] = st.total_ticks - prev.total_ticks
            elif st.start >= self._prev_ticks:  # started since the last sample: all of its time is new
                deltas[pid] = st.total_ticks
        # A process that ended was reaped by its parent, whose cutime/cstime now holds its whole life; when
        # the parent ended too, the grandparent holds both. Take off, at the nearest living ancestor, what
        # was already counted while they were alive.
        gone = {pid for pid, prev in self._prev.items() if pid not in members or members[pid].start != prev.start}
        for pid in gone:
            ancestor, hops = self._prev[pid].ppid, 0
            while ancestor in gone and hops < 64:
                ancestor, hops = self._prev[ancestor].ppid, hops + 1
            if ancestor in deltas:
                deltas[ancestor] -= self._prev[pid].total_ticks
        return sum(max(0, d) for d in deltas.values())

    def sample(self) -> MetricSample:
        members, ticks = self.table.scan()
        t = time.monotonic()
        dt = t - self._prev_t
        io_now = {pid: io for pid in members if (io := read_io(pid)) is not None}
        read_b = write_b = 0
        for pid, (r, w) in io_now.items():
            prev_io = self._prev_io.get(pid)
            prev = self._prev.get(pid)
            if prev_io is not None and prev is not None and prev.start == members[pid].start:
                read_b, write_b = read_b + max(0, r - prev_io[0]), write_b + max(0, w - prev_io[1])
            elif members[pid].start >= self._prev_ticks:
                read_b, write_b = read_b + r, write_b + w
        cpu_ticks = self._cpu_ticks(members)
        own = self._own_net.rates() if self._own_net is not None else (None, None)
        has_own = self._own_net is not None and self._own_net.last is not None
        if self.session_net.available:
            scope, (rx, tx) = "session", self.session_net.rates(members)
            if has_own:  # + its namespace's interfaces, whose sockets `ss` never sees (no byte is in both)
                rx, tx = _plus(rx, own[0]), _plus(tx, own[1])
        elif has_own:
            scope, (rx, tx) = "session", own
        else:
            scope, (rx, tx) = "host", self._net.rates()
        gpus = self.gpus.read(set(members)) if self.gpus is not None and self.gpus.available else None
        gpu_util, gpu_used, gpu_total = summarize(gpus)
        rated = dt > 0.05
        sample = MetricSample(
            ts=_now(), cpu=cpu_ticks / CLK_TCK / dt * 100 if rated else None,
            mem_mb=sum(st.rss_bytes for st in members.values()) / MB,
            disk_read_mbs=read_b / MB / dt if rated else None, disk_write_mbs=write_b / MB / dt if rated else None,
            net_rx_mbs=rx, net_tx_mbs=tx, gpu_util=gpu_util, gpu_mem_used_mb=gpu_used, gpu_mem_total_mb=gpu_total,
            gpus=gpus, gpu_available=gpus is not None, network_scope=scope, processes=len(members),
        )
        self._remember(members, ticks, t, io_now)
        return sample


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def _busy(times) -> float:
    """Seconds not idle (guest time is already inside user time on Linux, as psutil.cpu_percent knows)."""
    total = sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)
    return total - times.idle - getattr(times, "iowait", 0)


class HostSampler:
    """Worker-level figures: the whole machine (CPU in % of one core summed, like sessions: 16 busy cores = 1600)."""

    def __init__(self, gpus: GpuReader | None | bool = True):
        self.gpus = shared_gpu_reader() if gpus is True else (gpus or None)
        self._net = NetCounter()
        self._cpu = psutil.cpu_times()
        self._disk = psutil.disk_io_counters()
        self._t = time.monotonic()

    def sample(self) -> MetricSample:
        t = time.monotonic()
        dt = max(t - self._t, 1e-6)
        cpu, disk = psutil.cpu_times(), psutil.disk_io_counters()
        busy = _busy(cpu) - _busy(self._cpu)
        read = write = None
        if disk is not None and self._disk is not None:
            read = max(0, disk.read_bytes - self._disk.read_bytes) / MB / dt
            write = max(0, disk.write_bytes - self._disk.write_bytes) / MB / dt
        rx, tx = self._net.rates()
        mem = psutil.virtual_memory()
        gpus = self.gpus.read() if self.gpus is not None and self.gpus.available else None
        gpu_util, gpu_used, gpu_total = summarize(gpus)
        self._cpu, self._disk, self._t = cpu, disk, t
        return MetricSample(ts=_now(), cpu=max(0.0, busy) / dt * 100, mem_mb=(mem.total - mem.available) / MB,
                            disk_read_mbs=read, disk_write_mbs=write, net_rx_mbs=rx, net_tx_mbs=tx, gpu_util=gpu_util,
                            gpu_mem_used_mb=gpu_used, gpu_mem_total_mb=gpu_total, gpus=gpus, gpu_available=gpus is not None,
                            network_scope="host", processes=len(psutil.pids()))
