"""The agent: quick claims, sessions that survive an agent restart, lost workers, non-root agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import kill_tree, session_processes
from test_ssh_session import openssh


@pytest.fixture(scope="module")
def own(server_only):
    """This module starts and kills its own agents on the server-only stack."""
    return server_only


def test_a_launched_session_is_claimed_within_a_second(own):
    own.start_agent(queue="fast", name="fast")
    time.sleep(1.0)  # the agent is now parked in its long poll
    t0 = time.monotonic()
    view = own.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "fast"}})
    while own.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "queued":
        assert time.monotonic() - t0 < 1.0, "not claimed within 1 s"
        time.sleep(0.02)
    own.wait_status(view["id"], "active")
    own.api("POST", f"/api/v1/sessions/{view['id']}/stop")
    own.wait_status(view["id"], "stopped")


def test_idle_agent_does_not_busy_loop(own):
    proc = own.start_agent(queue="quiet", name="quiet")
    import psutil

    p = psutil.Process(proc.pid)
    p.cpu_percent(None)
    time.sleep(3)
    assert p.cpu_percent(None) < 10


def test_session_survives_agent_restart_and_is_readopted(own):
    data_dir = own.tmp / "agent-restart"
    agent = own.start_agent(queue="restart", name="restart", data_dir=data_dir)
    view = own.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "restart"}})
    view = own.wait_status(view["id"], "active")
    kill_tree(agent, signal.SIGTERM)
    assert openssh(view, "echo still-here").stdout.strip() == "still-here"
    own.start_agent(queue="restart", name="restart", data_dir=data_dir)
    assert own.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "active"
    workers = [w for w in own.api("GET", "/api/v1/workers") if w["name"] == "restart"]
    assert len(workers) == 1, "the restarted agent keeps its worker identity"
    own.api("POST", f"/api/v1/sessions/{view['id']}/stop")
    own.wait_status(view["id"], "stopped")
    assert session_processes(view["id"]) == []


def test_lost_worker_fails_its_sessions_with_the_reason(own):
    agent = own.start_agent(queue="lost", name="lost")
    view = own.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "lost"}})
    own.wait_status(view["id"], "active")
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    failed = own.wait_status(view["id"], "failed", timeout=30)  # heartbeat timeout is 6 s in tests
    assert "lost" in failed["error"] and "no heartbeat" in failed["error"]
    worker = [w for w in own.api("GET", "/api/v1/workers") if w["name"] == "lost"][0]
    assert worker["status"] == "lost"
    # The orphaned supervisor learns the session failed and tears everything down.
    deadline = time.monotonic() + 30
    while session_processes(view["id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(view["id"]) == []


def test_dead_supervisor_is_reported_by_the_agent(own):
    own.start_agent(queue="crash", name="crash")
    view = own.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "crash"}})
    own.wait_status(view["id"], "active")
    pid = int((own.tmp / "agent-crash" / "sessions" / view["id"] / "supervisor.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    failed = own.wait_status(view["id"], "failed", timeout=20)
    assert "supervisor exited unexpectedly" in failed["error"]
    deadline = time.monotonic() + 10  # the agent tears down what the supervisor left: SSH server, processes, user
    while session_processes(view["id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(view["id"]) == []
    assert subprocess.run(["id", f"berth-{view['id']}"], capture_output=True).returncode != 0
    if os.geteuid() == 0:  # nothing of it is left: its socket dir is gone, its home locked
        assert not (Path("/run/berth") / view["id"]).exists()
        home = Path("/var/lib/berth/homes") / view["id"]
        assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (0, 0o700)


def test_non_root_agent_gives_password_login_with_a_pty(own, nonroot_user):
    own.start_agent(queue="nonroot", name="nonroot", user=nonroot_user)
    result = own.cli("launch", "ssh-session", "--queue", "nonroot", "--wait", "--json")
    view = json.loads(result.stdout)
    try:
        assert view["ssh"]["user"] == nonroot_user
        assert view["ssh"]["server"] == "builtin"
        assert any("built-in SSH server" in e for e in own.events(view["id"])), own.events(view["id"])
        result = openssh(view, "pwd; which python; id -un")
        assert result.returncode == 0, result.stderr
        pwd_, python, user = result.stdout.split()
        assert pwd_.endswith("/workspace") and python.endswith("/.venv/bin/python") and user == nonroot_user
        tty = openssh(view, "tty", tty=True)
        assert "/dev/pts/" in tty.stdout
    finally:
        own.cli("sessions", "stop", view["id"])
    assert session_processes(view["id"]) == []


def test_non_root_agent_asked_for_dropbear_still_works(own, nonroot_user):
    own.start_agent(queue="nonroot-db", name="nonroot-db", user=nonroot_user)
    view = json.loads(own.cli("launch", "ssh-session", "--queue", "nonroot-db", "--dropbear", "--wait", "--json").stdout)
    try:
        assert openssh(view, "tty", tty=True).stdout.strip().startswith("/dev/pts/")
        assert view["ssh"]["server"] in ("dropbear", "builtin")
    finally:
        own.cli("sessions", "stop", view["id"])


def test_berth_up_runs_server_and_agent_and_stops_on_ctrl_c(tmp_path):
    from pathlib import Path
    import sys

    from conftest import free_port, wait_http

    port = free_port()
    env = dict(os.environ, HOME=str(tmp_path), BERTH_ADMIN_PASSWORD="up-test-password")
    berth = str(Path(sys.executable).with_name("berth"))
    up = subprocess.Popen([berth, "up", "--data-dir", str(tmp_path / "data"), "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", up)
        subprocess.run([berth, "login", "--server", f"http://127.0.0.1:{port}", "-u", "admin", "-p", "up-test-password"],
                       env=env, check=True, capture_output=True)
        view = json.loads(subprocess.run([berth, "launch", "ssh-session", "--wait", "--json"], env=env, check=True,
                                         capture_output=True, text=True).stdout)
        assert openssh(view, "echo up-ok").stdout.strip() == "up-ok"
        subprocess.run([berth, "sessions", "stop", view["id"]], env=env, check=True, capture_output=True)
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=20)
    assert up.returncode == 0
    assert "dashboard http://127.0.0.1:" in out
    assert (tmp_path / "data" / "berth.db").exists()


def test_berth_up_generates_and_prints_admin_password_once(tmp_path):
    from pathlib import Path
    import sys

    from conftest import free_port, wait_http

    env = {k: v for k, v in os.environ.items() if k != "BERTH_ADMIN_PASSWORD"}
    env["HOME"] = str(tmp_path)
    berth = str(Path(sys.executable).with_name("berth"))
    outputs = []
    for _ in range(2):
        port = free_port()
        up = subprocess.Popen([berth, "up", "--data-dir", str(tmp_path / "data"), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", up)
            time.sleep(0.5)
        finally:
            up.send_signal(signal.SIGINT)
            outputs.append(up.communicate(timeout=20)[0])
    assert "created user 'admin' with password:" in outputs[0]
    assert "created user 'admin'" not in outputs[1]
    password = outputs[0].split("with password:")[1].split()[0]
    assert len(password) >= 22
    assert password not in (tmp_path / "data" / "agent.log").read_text()


def test_agent_posts_worker_host_metrics(own):
    own.start_agent(queue="hostm", name="hostm",
                    env={"BERTH_AGENT_HOST_METRICS_SAMPLE_S": "0.5", "BERTH_AGENT_HOST_METRICS_POST_S": "1"})
    worker = [w for w in own.api("GET", "/api/v1/workers") if w["name"] == "hostm"][0]
    deadline = time.monotonic() + 60
    data = {}
    while time.monotonic() < deadline:
        data = own.api("GET", f"/api/v1/workers/{worker['id']}/metrics")
        if data["samples"] > 0:
            break
        time.sleep(0.5)
    assert data["samples"] > 0 and data["series"]["cpu"]["mean"]
