"""Launch -> SSH-ready latency, next to the floor measured in the same run.

    .venv/bin/python bench/launch.py [--runs 10]
    .venv/bin/python bench/launch.py --backend container [--image localhost/berth-test:bookworm] [--runs 10]

berth: POST a session, then try an OpenSSH login with the returned credentials until one succeeds.
floor: start a bare sshd with the same settings (fresh ed25519 host key, password auth) and log in once.
Both use the same client (sshpass + ssh, running `true`). Also prints the supervisor's RSS per session.
Needs root (per-session users, sshd). Targets (issue #2): median <= 1.5 s and <= 5x the floor; RSS <= 60 MB.

--backend container: the same launch -> SSH-ready, with `image` set, on a container agent (Podman, the test
agent's settings), next to the process backend in the same run (same server, one agent each on its own queue,
runs interleaved). The image is built or found cached by scripts/test-image.sh before any timing.
Target (issue #11): container median <= 2x the process backend's.
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


def launch_to_ready(stack: Stack, config: dict) -> tuple[str, float]:
    """POST a session, then log in with its credentials until one login succeeds: (session id, seconds)."""
    t0 = time.perf_counter()
    sid = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": config})["id"]
    while True:
        view = stack.api("GET", f"/api/v1/sessions/{sid}")
        if view["status"] == "failed":
            raise SystemExit(f"session failed: {view['error']}")
        if view["ssh"] and login_once(view["ssh"]["host"], view["ssh"]["port"], view["ssh"]["user"], view["ssh"]["password"]):
            return sid, time.perf_counter() - t0
        time.sleep(0.01)


def stop_session(stack: Stack, sid: str) -> str:
    """Stop it and wait for the end; the final status (a teardown error fails a session: reported, not hidden)."""
    stack.api("POST", f"/api/v1/sessions/{sid}/stop")
    view = stack.wait_status(sid, "stopped", "failed")
    return "stopped" if view["status"] == "stopped" else f"failed: {view['error']}"


def start_server(stack: Stack) -> None:
    stack.start_server()
    stack.token = httpx.post(stack.url + "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()["token"]


def berth_runs(runs: int) -> tuple[list[float], list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    stack = Stack(tmp, None)
    latencies, rss = [], []
    try:
        start_server(stack)
        stack.start_agent(name="bench")
        time.sleep(1.0)  # let the agent park in its long poll, as it would be on a real worker
        for _ in range(runs):
            sid, seconds = launch_to_ready(stack, {})
            latencies.append(seconds)
            pid = int((tmp / "agent-bench" / "sessions" / sid / "supervisor.pid").read_text())
            rss.append(psutil.Process(pid).memory_info().rss / 2**20)
            stack.api("POST", f"/api/v1/sessions/{sid}/stop")
            stack.wait_status(sid, "stopped")
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return latencies, rss


def container_runs(runs: int, image: str) -> tuple[list[float], list[float], list[str]]:
    """Process and container launches in one run, interleaved so both see the same machine load."""
    from container_image import AGENT_ENV

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-ctr-"))
    stack = Stack(tmp, None)
    process, container, odd_stops = [], [], []
    try:
        start_server(stack)
        stack.api("POST", "/api/v1/queues", json={"name": "bench-ctr"})
        stack.start_agent(name="bench-proc")
        stack.start_agent(name="bench-ctr", queue="bench-ctr", env=AGENT_ENV)
        time.sleep(1.0)  # both agents parked in their long polls
        for _ in range(runs):
            for config, out in (({}, process), ({"image": image, "queue": "bench-ctr"}, container)):
                sid, seconds = launch_to_ready(stack, config)
                out.append(seconds)
                end = stop_session(stack, sid)
                if end != "stopped":
                    odd_stops.append(f"{sid} ({'container' if config else 'process'}): {end}")
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return process, container, odd_stops


def container_main(runs: int, image: str | None) -> None:
    from container_image import IMAGE, ensure_test_image

    if image is None or image == IMAGE:
        image = ensure_test_image()  # built or found cached, outside the timing
    process, container, odd_stops = container_runs(runs, image)
    pmed, cmed = statistics.median(process), statistics.median(container)
    print(f"launch -> SSH-ready, process vs container backend ({image}), {runs} runs each, interleaved (seconds)")
    print(f"  process    median {pmed:.3f}  min {min(process):.3f}  max {max(process):.3f}")
    print(f"  container  median {cmed:.3f}  min {min(container):.3f}  max {max(container):.3f}")
    print(f"  ratio      {cmed / pmed:.2f}x the process backend   target <= 2x [{'ok' if cmed / pmed <= 2 else 'MISS'}]")
    for line in odd_stops:
        print(f"  stop did not end as 'stopped': {line}")


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
    parser.add_argument("--backend", choices=["process", "container"], default="process",
                        help="container: the container backend next to the process backend, same run")
    parser.add_argument("--image", default=None, help="the image for --backend container (default: the test image)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (per-session users and sshd need it)")
    if args.backend == "container":
        container_main(args.runs, args.image)
        return
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
