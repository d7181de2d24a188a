"""Launch -> SSH-ready latency, next to the floor measured in the same run.

    .venv/bin/python bench/launch.py [--runs 10]

berth: POST a session, then try an OpenSSH login with the returned credentials until one succeeds.
floor: start a bare sshd with the same settings (fresh ed25519 host key, password auth) and log in once.
Both use the same client (sshpass + ssh, running `true`). Also prints the supervisor's RSS per session.
Needs root (per-session users, sshd). Targets (issue #2): median <= 1.5 s and <= 5x the floor; RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import ADMIN_PASSWORD, Stack  # noqa: E402  (the same real server + agent the tests use)

SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
       "-o", "ConnectTimeout=5", "-o", "PubkeyAuthentication=no"]


def login_once(host: str, port: int, user: str, password: str) -> bool:
    r = subprocess.run(["sshpass", "-p", password, *SSH, "-p", str(port), f"{user}@{host}", "true"],
                       capture_output=True, timeout=15)
    return r.returncode == 0


def berth_runs(runs: int) -> tuple[list[float], list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    stack = Stack(tmp, None)
    latencies, rss = [], []
    try:
        stack.start_server()
        stack.token = httpx.post(stack.url + "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()["token"]
        stack.start_agent(name="bench")
        time.sleep(1.0)  # let the agent park in its long poll, as it would be on a real worker
        for _ in range(runs):
            t0 = time.perf_counter()
            sid = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {}})["id"]
            while True:
                view = stack.api("GET", f"/api/v1/sessions/{sid}")
                if view["status"] == "failed":
                    raise SystemExit(f"session failed: {view['error']}")
                if view["ssh"] and login_once(view["ssh"]["host"], view["ssh"]["port"], view["ssh"]["user"], view["ssh"]["password"]):
                    break
                time.sleep(0.01)
            latencies.append(time.perf_counter() - t0)
            pid = int((tmp / "agent-bench" / "sessions" / sid / "supervisor.pid").read_text())
            rss.append(psutil.Process(pid).memory_info().rss / 2**20)
            stack.api("POST", f"/api/v1/sessions/{sid}/stop")
            stack.wait_status(sid, "stopped")
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return latencies, rss


def floor_runs(runs: int) -> list[float]:
    """A bare sshd, configured as berth configures its own, started and logged into once per run."""
    user, password = "benchfloor" + uuid.uuid4().hex[:4], uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="berth-floor-home-", dir="/var/tmp"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group", user], check=True)
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
    shutil.chown(home, user, user)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    out = []
    try:
        for _ in range(runs):
            run_dir = Path(tempfile.mkdtemp(prefix="berth-floor-"))
            from berth.agent.ssh import free_port

            port = free_port()
            t0 = time.perf_counter()
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(run_dir / "host_ed25519")], check=True)
            (run_dir / "sshd_config").write_text(
                f"Port {port}\nListenAddress 0.0.0.0\nHostKey {run_dir / 'host_ed25519'}\nPidFile {run_dir / 'pid'}\nUsePAM no\n"
                f"PasswordAuthentication yes\nKbdInteractiveAuthentication no\nAllowUsers {user}\nPrintMotd no\n")
            sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(run_dir / "sshd_config")], stderr=subprocess.DEVNULL)
            while not login_once("127.0.0.1", port, user, password):
                time.sleep(0.005)
            out.append(time.perf_counter() - t0)
            sshd.terminate()
            sshd.wait()
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (per-session users and sshd need it)")
    floor = floor_runs(args.runs)
    latencies, rss = berth_runs(args.runs)
    med, fmed = statistics.median(latencies), statistics.median(floor)
    print(f"launch -> SSH-ready, {args.runs} runs each (seconds)")
    print(f"  berth   median {med:.3f}  min {min(latencies):.3f}  max {max(latencies):.3f}")
    print(f"  floor   median {fmed:.3f}  min {min(floor):.3f}  max {max(floor):.3f}   (bare sshd start + first login)")
    print(f"  ratio   {med / fmed:.2f}x the floor   targets: median <= 1.5 s [{'ok' if med <= 1.5 else 'MISS'}], "
          f"<= 5x floor [{'ok' if med / fmed <= 5 else 'MISS'}]")
    print(f"supervisor RSS per session: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB   "
          f"target <= 60 MB [{'ok' if max(rss) <= 60 else 'MISS'}]")


if __name__ == "__main__":
    main()
