"""Sampling real processes (berth.agent.monitor): CPU, memory, disk, terminals, input, cost, GPU degrade."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from berth.agent.gpus import GpuReader
from berth.agent.monitor import HostSampler, SessionSampler, SocketActivity
from berth.agent.proctable import ProcessTable, Scope

BURN = "import time\nt = time.time()\nwhile True: pass"
SLEEP = "import time\ntime.sleep(600)"


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(args, session_id: str | None = None, **kw) -> subprocess.Popen:
        env = dict(os.environ, **({"BERTH_SESSION_ID": session_id} if session_id else {}))
        env.pop("BERTH_SESSION_ID", None) if session_id is None else None
        args = [sys.executable, "-c", args] if isinstance(args, str) else args
        proc = subprocess.Popen(args, env=env, start_new_session=True, **kw)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def sid() -> str:
    return "t" + uuid.uuid4().hex[:11]


def sample_after(sampler: SessionSampler, seconds: float = 1.0):
    time.sleep(seconds)
    return sampler.sample()


def tree_cpu_s(pid: int) -> float:
    """Ground truth, from the kernel via psutil: CPU seconds a process tree has used so far, reaped
    descendants included (they sit in the cutime/cstime of the ancestor that reaped them). Comparing with
    it, not with "one full core", keeps these tests right on a busy CI machine."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:  # ended between the listing and the read: its time is in its reaper's
            pass
    return total


def sampled_cpu_s(sampler: SessionSampler, rounds: int, pause: float = 1.0) -> tuple[list[float], float]:
    """The sampler's readings over `rounds` samples, and the CPU seconds they add up to."""
    values, seconds = [], 0.0
    for _ in range(rounds):
        time.sleep(pause)
        before = sampler._prev_t
        value = sampler.sample().cpu
        values.append(value)
        seconds += value / 100 * (sampler._prev_t - before)
    return values, seconds


def close_to(got: float, truth: float) -> bool:
    return abs(got - truth) <= 0.1 + 0.12 * truth


def test_busy_process_reads_its_cpu_and_idle_one_is_zero(spawn):
    busy, idle = sid(), sid()
    proc = spawn(BURN, busy)
    spawn(SLEEP, idle)
    time.sleep(0.3)
    truth0 = tree_cpu_s(proc.pid)
    s_busy, s_idle = SessionSampler(busy, gpus=False), SessionSampler(idle, gpus=False)
    values, got = sampled_cpu_s(s_busy, 1, pause=1.5)
    truth = tree_cpu_s(proc.pid) - truth0
    b = s_idle.sample()
    assert values[0] <= 115, values  # % of one core: one busy process reads ~100 on an idle machine
    assert truth > 0.3 and close_to(got, truth), (got, truth)
    assert s_busy.sample().processes == 1 and b.processes == 1
    assert b.cpu < 3, b.cpu


def test_short_lived_children_are_counted(spawn):
    """CPU of processes that start and end between samples reaches us through the parent's cutime
    (seeing only the processes alive at each sample would read about a third of the truth here)."""
    s = sid()
    proc = spawn(["sh", "-c", 'while true; do timeout 0.3 sh -c "while :; do :; done"; done'], s)
    time.sleep(0.1)
    truth0 = tree_cpu_s(proc.pid)
    sampler = SessionSampler(s, gpus=False)
    values, got = sampled_cpu_s(sampler, 3)
    truth = tree_cpu_s(proc.pid) - truth0
    assert all(v <= 125 for v in values), values
    assert truth > 0.5 and close_to(got, truth), (values, got, truth)


def test_a_long_child_ending_is_not_counted_twice(spawn):
    """When the child and the `timeout` that reaped it both end, the shell's cutime holds the child's whole
    life, part of which was counted while it ran."""
    s = sid()
    proc = spawn(["sh", "-c", 'timeout 1.6 sh -c "while :; do :; done"; sleep 30'], s)
    truth0 = tree_cpu_s(proc.pid)
    sampler = SessionSampler(s, gpus=False)
    values, got = sampled_cpu_s(sampler, 3)
    truth = tree_cpu_s(proc.pid) - truth0
    assert all(v <= 125 for v in values), values  # no spike when it is reaped
    assert truth > 0.3 and close_to(got, truth), (values, got, truth)  # about 1.6 s of CPU on an idle machine


def test_memory_of_a_process_allocating_100_mb(spawn):
    s = sid()
    r, w = os.pipe()
    spawn(f"import os,time\nblock = b'x' * 100_000_000\nos.write({w}, b'1')\ntime.sleep(600)", s, pass_fds=(w,))
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    sample = SessionSampler(s, gpus=False).sample()
    assert 100 <= sample.mem_mb <= 160, sample.mem_mb


def test_disk_write_rate(spawn, tmp_path):
    s = sid()
    target = Path("/var/tmp") / f"berth-monitor-{s}"
    code = (f"import os,time\nf = open({str(target)!r}, 'wb')\nchunk = os.urandom(1 << 20)\n"
            "for _ in range(400):\n    f.write(chunk); f.flush(); time.sleep(0.005)\nf.close(); time.sleep(600)")
    try:
        spawn(code, s)
        sampler = SessionSampler(s, gpus=False)
        sample = sample_after(sampler, 1.0)
        assert sample.disk_write_mbs > 20, sample.disk_write_mbs  # page-cache dirtying counts at write time
        assert sample.disk_read_mbs < 5
    finally:
        target.unlink(missing_ok=True)


def test_tree_and_uid_scopes(spawn):
    child = spawn(BURN)  # no marker: found as a child of this process (the non-root agent's supervisor)
    time.sleep(0.2)
    tree = SessionSampler(sid(), root_pid=os.getpid(), gpus=False)
    assert child.pid in tree.pids
    other = SessionSampler(sid(), gpus=False)
    assert child.pid not in other.pids
    if os.geteuid() == 0:  # root agents: the per-session user's processes
        nobody = spawn(SLEEP, user=65534)
        time.sleep(0.2)
        by_uid = SessionSampler(sid(), uid=65534, gpus=False)
        assert nobody.pid in by_uid.pids and child.pid not in by_uid.pids


def test_process_table_reads_new_pids_once():
    table = ProcessTable(Scope(session_id="nobody-has-this"))
    table.scan()
    verdicts = dict(table._verdicts)
    table.scan()
    assert all(table._verdicts[p] is v for p, v in verdicts.items() if p in table._verdicts and v.settled)


def test_pty_input_moves_last_input_at_and_silence_does_not(spawn):
    s = sid()
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        spawn(["setsid", "-c", "cat"], s, stdin=slave, stdout=slave, stderr=slave)
        time.sleep(0.3)
        sampler = SessionSampler(s, gpus=False)
        sampler.sample()
        assert sampler.ttys() == [path]
        long_ago = time.time() - 120
        os.utime(path, (long_ago, long_ago))  # atime moves at most every 8 s: start from the past
        time.sleep(1.0)
        sampler.sample()
        assert sampler.last_input_at() == pytest.approx(long_ago, abs=1)  # an open terminal with no input
        before = time.time()
        os.write(master, b"hello\n")  # a keystroke: cat reads it from the terminal
        time.sleep(0.3)
        assert sampler.last_input_at() >= before - 1
    finally:
        os.close(master)
        os.close(slave)


def test_note_input_hook():
    sampler = SessionSampler(sid(), gpus=False)
    assert sampler.last_input_at() is None
    sampler.note_input()
    assert time.time() - sampler.last_input_at() < 1


def test_socket_bytes_above_the_threshold_count_as_input():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    try:
        activity = SocketActivity([port], threshold_bytes=2048, min_interval_s=0)
        assert activity.poll() is None  # baseline
        client.sendall(b"k" * 100)  # keepalive-sized
        time.sleep(0.1)
        assert activity.poll() is None
        client.sendall(b"x" * 10_000)
        time.sleep(0.1)
        assert time.time() - activity.poll() < 2
    finally:
        for s in (client, peer, server):
            s.close()


def _host_address() -> str | None:
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


DOWNLOAD = ("import socket, sys, time\n"
            "c = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
            "t = time.time()\n"
            "while time.time() - t < 30 and c.recv(1 << 16): pass\n")


@pytest.mark.parametrize("scope", ["marker", "uid"])
def test_session_network_is_its_own_tcp_traffic(spawn, scope):
    """A session's download shows in its own network figures, not in another session's. Its sockets are
    found by socket inode (non-root agents) or by owner uid (a root agent's per-session user). The
    sending end lives in this (non-session) process."""
    import threading

    if scope == "uid" and os.geteuid() != 0:
        pytest.skip("per-session users need a root agent")
    host = _host_address()
    if host is None:
        pytest.skip("no non-loopback IPv4 address on this host to move traffic over")
    downloader, bystander = sid(), sid()
    server = socket.create_server((host, 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                conn.sendall(b"d" * (1 << 16))
                time.sleep(0.002)  # ~30 MB/s at most

    threading.Thread(target=serve, daemon=True).start()
    spawn(SLEEP, bystander)
    uid = 65534 if scope == "uid" else None
    a = SessionSampler(downloader, uid=uid, gpus=False, socket_interval_s=0.5)
    b = SessionSampler(bystander, gpus=False, socket_interval_s=0.5)
    try:
        spawn(["python3", "-c", DOWNLOAD, host, str(server.getsockname()[1])], downloader, **({"user": uid} if uid else {}))
        time.sleep(0.5)
        a.sample(), b.sample()  # baselines
        time.sleep(1.2)
        got, other = a.sample(), b.sample()
    finally:
        stop.set()
        server.close()
    assert got.network_scope == "session" and other.network_scope == "session"
    assert got.net_rx_mbs > 1.0, got
    assert got.net_tx_mbs < 0.5, got  # acknowledgements are not payload
    assert other.net_rx_mbs == 0 and other.net_tx_mbs == 0, other


def test_ss_output_is_parsed_with_owner_and_counters():
    from berth.agent.netsockets import parse_ss

    text = ("0 0 10.0.0.5:41234 93.184.216.34:443 uid:1001 ino:5555 sk:1 cgroup:/ <->\n"
            "\t ts sack cubic bytes_sent:900 bytes_acked:800 bytes_received:123456 segs_out:9\n"
            "0 0 127.0.0.1:5000 127.0.0.1:41000 ino:6666 sk:2 <->\n"
            "\t bytes_acked:10 bytes_received:20\n"
            "0 0 [::1]:22 [::1]:50000 ino:7777 sk:3 <->\n"
            "ESTAB 0 0 [2001:db8::1]:22 [2001:db8::2]:50000 ino:8888 sk:4 <->\n"
            "TIME-WAIT 0 0 127.0.0.1:39320 127.0.0.1:43983 timer:(timewait,24sec,0) ino:0 sk:102f\n")
    a, b, c, d = parse_ss(text)
    assert (a.local, a.peer, a.uid, a.ino, a.received, a.acked) == ("10.0.0.5:41234", "93.184.216.34:443", 1001, 5555, 123456, 800)
    assert a.local_port == 41234 and not a.loopback_peer
    assert b.uid == 0 and b.loopback_peer and (b.received, b.acked) == (20, 10)
    assert c.loopback_peer and c.local_port == 22 and c.received == 0
    assert not d.loopback_peer


def _cpu() -> float:
    t = os.times()  # children too: `ss` runs as a child
    return t.user + t.system + t.children_user + t.children_system


def test_sampler_cost_is_under_one_percent_of_a_core(spawn):
    """Real time: one sample and one input check every 2 s would be slow to test, so run 2 s worth of
    work back to back and charge it to 2 s. ss (input (c)) runs once per 10 s: charge 1/5 of a poll."""
    s = sid()
    for _ in range(4):
        spawn(SLEEP, s)
    spawn(["sh", "-c", "sleep 600"], s)
    time.sleep(0.3)
    server = socket.create_server(("127.0.0.1", 0))
    sampler = SessionSampler(s, gpus=False, input_ports=[server.getsockname()[1]], socket_interval_s=0)
    try:
        n = 30
        c0 = _cpu()
        for _ in range(n):
            sampler.sample()
            sampler.last_input_at()
        per_round = (_cpu() - c0) / n
        sampler.tcp.min_interval_s = 3600  # now without ss
        c0 = _cpu()
        for _ in range(n):
            sampler.sample()
            sampler.last_input_at()
        without_ss = (_cpu() - c0) / n
    finally:
        server.close()
    share = (without_ss + (per_round - without_ss) / 5) / 2.0
    print(f"sampler: {without_ss * 1000:.2f} ms CPU per sample, ss {(per_round - without_ss) * 1000:.1f} ms per poll "
          f"= {share * 100:.3f} % of a core at one sample per 2 s and one ss per 10 s")
    assert sampler.sample().processes >= 5  # sh forks its sleep
    assert share <= 0.01


def test_nvml_degrades_cleanly_or_reads_real_gpus():
    reader = GpuReader()
    sample = SessionSampler(sid(), gpus=reader).sample()
    if not reader.available:
        assert reader.reason and reader.read() is None
        assert sample.gpus is None and not sample.gpu_available and sample.gpu_util is None
    else:  # a real GPU: every device reports figures
        gpus = reader.read({os.getpid()})
        assert gpus and all(g.mem_total_mb and g.util is not None for g in gpus)
        assert sample.gpu_available and len(sample.gpus) == len(gpus)


class FakeNvml:
    """Stands in for the NVIDIA driver (no GPU on CI): two devices, one process of ours on device 1."""

    class NVMLError_NotFound(Exception):
        pass

    def __init__(self, ours: int):
        self.ours = ours

    def nvmlInit(self): pass
    def nvmlDeviceGetCount(self): return 2
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetName(self, h): return b"Fake H100"
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=[90, 70][h])
    def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(used=[4e9, 2e9][h], total=80e9)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=1234567, usedGpuMemory=int(3e9))] + ([SimpleNamespace(pid=self.ours, usedGpuMemory=int(1e9))] if h else [])

    def nvmlDeviceGetProcessUtilization(self, h, since):
        if h == 0:
            raise self.NVMLError_NotFound()
        return [SimpleNamespace(pid=self.ours, timeStamp=since + 1, smUtil=30), SimpleNamespace(pid=self.ours, timeStamp=since + 2, smUtil=40),
                SimpleNamespace(pid=1234567, timeStamp=since + 2, smUtil=30)]


def test_gpu_attribution_logic_with_a_fake_driver():
    reader = GpuReader(FakeNvml(ours=os.getpid()))
    gpus = reader.read({os.getpid()})
    assert [g.util for g in gpus] == [90, 70] and [g.mem_total_mb for g in gpus] == [80_000, 80_000]
    assert [g.session_mem_mb for g in gpus] == [0, 1000]
    assert [g.session_util for g in gpus] == [0.0, 40.0]  # NOT_FOUND: none of ours ran; else the newest sample
    sample = SessionSampler(sid(), gpus=reader).sample()
    assert sample.gpu_available and sample.gpu_util == 80 and sample.gpu_mem_used_mb == 6000


def test_host_sampler():
    host = HostSampler(gpus=False)
    time.sleep(0.5)
    s = host.sample()
    assert s.cpu >= 0 and s.mem_mb > 0 and s.processes > 0 and s.network_scope == "host" and not s.gpu_available
