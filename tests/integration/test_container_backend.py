"""The container backend with the real Podman: a session in its own container of the image it names.

The image is built from a debootstrap rootfs (tests/container_image.py, cached); the agent runs with
BERTH_AGENT_BACKEND=container. What is checked from outside: the container (name, label, user namespace), that
root in it is not host root, setup steps run inside it (init script, packages into its Python), the workspace
across two sessions, teardown, a bad image, a container that dies, an agent restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import git_daemon, kill_tree
from container_image import AGENT_ENV, IMAGE, container_exists, ensure_test_image, podman

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")

SUBUID_START = 1_000_000_000  # AgentSettings.container_subuid_start's default


@pytest.fixture(scope="module")
def cstack(server_only, tmp_path_factory):
    ensure_test_image()  # fails loudly when it cannot be built
    data_dir = tmp_path_factory.mktemp("ctr-agent")
    server_only.container_agent_dir = data_dir
    server_only.start_agent(name="ctr", data_dir=data_dir, env=AGENT_ENV)
    return server_only


def launch(stack, *args: str, check: bool = True):
    return stack.cli("launch", "ssh-session", "--image", IMAGE, "--wait", "--json", *args, check=check, timeout=300)


def launched(stack, *args: str) -> dict:
    view = json.loads(launch(stack, *args).stdout)
    assert view["status"] in ("active", "idle"), stack.events(view["id"])
    return view


def inspect(session_id: str) -> dict:
    return json.loads(podman("container", "inspect", f"berth-{session_id}").stdout)[0]


def in_container(session_id: str, *argv: str, user: str = "1000:1000") -> str:
    return podman("exec", "--user", user, f"berth-{session_id}", *argv).stdout


def stop(stack, session_id: str) -> None:
    stack.cli("sessions", "stop", session_id)
    assert stack.wait_status(session_id, "stopped", "failed", timeout=60)["status"] == "stopped", stack.events(session_id)


def test_session_runs_in_its_own_container_as_an_unprivileged_host_range(cstack, tmp_path):
    script = tmp_path / "init.sh"
    script.write_text("# comments at line start are allowed\necho init-ran-as-$(id -u)\n"
                      "echo marker > ~/from-init\ngrep PRETTY_NAME /etc/os-release\n")
    view = launched(cstack, "--init-script", str(script), "--packages", "six==1.16.0")
    sid = view["id"]
    try:
        info = inspect(sid)
        assert info["Config"]["Labels"]["berth.session"] == sid
        assert info["State"]["Running"]
        uid_map = info["HostConfig"]["IDMappings"]["UidMap"]
        base = int(uid_map[0].split(":")[1])
        assert uid_map == [f"0:{base}:65536"] and base >= SUBUID_START
        # root in the container is not host root: its main process runs as the range's first id
        main = psutil.Process(info["State"]["Pid"])
        assert main.uids().real == base and main.uids().effective == base
        assert in_container(sid, "id", "-u", user="0:0").strip() == "0"
        events = cstack.events(sid)
        assert any(f"user namespace: root → host uid {base}" in e for e in events), events
        assert any("init: init-ran-as-1000" in e for e in events), events
        assert any('init: PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in e for e in events), events
        # the home is bind-mounted at the same path, owned on the host by the mapped session user
        home = Path(in_container(sid, "sh", "-c", "echo $HOME").strip())
        assert (home / "from-init").read_text() == "marker\n"
        assert (home / "from-init").stat().st_uid == base + 1000
        assert in_container(sid, "cat", str(home / "from-init")) == "marker\n"
        # packages went into the venv of the container's own Python
        out = in_container(sid, str(home / ".venv/bin/python"), "-c", "import six, sys; print(six.__version__, sys.base_prefix)")
        assert out.split() == ["1.16.0", "/usr"]
        # sampling sees the container's processes (its uid range)
        in_container(sid, "sh", "-c", "nohup sleep 300 >/dev/null 2>&1 &")
        assert any(p.info["uids"] and p.info["uids"].real == base + 1000 and p.info["name"] == "sleep"
                   for p in psutil.process_iter(["uids", "name"]))
    finally:
        stop(cstack, sid)
    assert not container_exists(sid)
    assert not any(p.info["uids"] and base <= p.info["uids"].real < base + 65536 for p in psutil.process_iter(["uids"]))


def test_workspace_is_stored_and_restored_into_a_new_container(cstack, tmp_path):
    script = tmp_path / "init.sh"
    script.write_text("mkdir -p ~/ws && echo kept-across-sessions > ~/ws/note.txt\n")
    first = launched(cstack, "--workspace", "~/ws", "--init-script", str(script))
    first_base = int(inspect(first["id"])["HostConfig"]["IDMappings"]["UidMap"][0].split(":")[1])
    stop(cstack, first["id"])
    assert not container_exists(first["id"])
    second = launched(cstack, "--workspace", "~/ws", "--restore-session", first["id"])
    sid = second["id"]
    try:
        assert second["restored_from"] == first["id"]
        base = int(inspect(sid)["HostConfig"]["IDMappings"]["UidMap"][0].split(":")[1])
        assert base > first_base  # a fresh range: ids are never reused
        home = in_container(sid, "sh", "-c", "echo $HOME").strip()
        assert in_container(sid, "cat", f"{home}/ws/note.txt") == "kept-across-sessions\n"
        assert in_container(sid, "stat", "-c", "%u", f"{home}/ws/note.txt").strip() == "1000"
    finally:
        stop(cstack, sid)
    assert not container_exists(sid)


def test_an_image_that_is_not_there_fails_at_once_naming_it(cstack):
    t0 = time.monotonic()
    result = launch(cstack, "--image", "localhost/berth-no-such-image:1", check=False)
    view = json.loads(result.stdout)
    assert view["status"] == "failed"
    assert time.monotonic() - t0 < 30
    message = "image 'localhost/berth-no-such-image:1' is not on this worker (podman images); pull or build it there"
    assert message in view["error"]
    assert any(message in e for e in cstack.events(view["id"]))
    assert not container_exists(view["id"])


def _outward_address() -> str:
    """This host's address on its default route: what a container's user-mode network reaches (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # a documentation address; no packet is sent: this only picks the route
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "the test needs a non-loopback address a container can reach"
    return address


def test_an_image_without_git_clones_with_berths_git(cstack, tmp_path):
    """The test image has neither git nor ssh: the clone runs inside the container with the worker's git from the
    /berth bundle (last on PATH), over the container's own network, as the session user."""
    src = tmp_path / "src"
    src.mkdir()
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    (src / "hello.txt").write_text("from the repository\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    with git_daemon(src, tmp_path / "served", host=_outward_address()) as url:
        view = launched(cstack, "--git-repo", url, "--workspace", "~/ws", "--dropbear")
    sid = view["id"]
    try:
        # the container's SSH server is the backend's choice: the option is said not to apply, not silently dropped
        assert any("(the dropbear option does not apply there)" in e for e in cstack.events(sid)), cstack.events(sid)
        assert podman("exec", f"berth-{sid}", "sh", "-c", "command -v git", check=False).returncode != 0
        home = in_container(sid, "sh", "-c", "echo $HOME").strip()
        assert in_container(sid, "cat", f"{home}/ws/repo/hello.txt") == "from the repository\n"
        assert in_container(sid, "stat", "-c", "%u", f"{home}/ws/repo/.git/HEAD").strip() == "1000"
        got = in_container(sid, "sh", "-c", f"PATH=$PATH:/berth/bin git -C {home}/ws/repo rev-parse HEAD").strip()
        assert got == head
    finally:
        stop(cstack, sid)


def test_a_container_that_dies_fails_the_session_with_its_status_and_last_lines(cstack):
    sid = launched(cstack)["id"]
    # container root ends it from inside (the exec itself may die with the container: its status is not checked)
    podman("exec", "--user", "0:0", f"berth-{sid}", "sh", "-c", "kill -TERM 1", check=False)
    view = cstack.wait_status(sid, "failed", timeout=30)
    assert f"the container berth-{sid} exited with status 143" in view["error"]
    assert "berth: the container got SIGTERM" in view["error"]  # its last log lines
    assert any("berth: the container got SIGTERM" in e for e in cstack.events(sid))
    assert not container_exists(sid)


def test_a_dead_supervisor_leaves_no_container(cstack):
    sid = launched(cstack)["id"]
    pid_file = cstack.container_agent_dir / "sessions" / sid / "supervisor.pid"
    psutil.Process(int(pid_file.read_text())).kill()
    view = cstack.wait_status(sid, "failed", timeout=30)
    assert "supervisor exited unexpectedly" in view["error"]
    assert not container_exists(sid)  # the agent's clean_up_orphan found it by its label


def test_an_agent_restart_keeps_the_session_and_its_container(cstack):
    # Last in the module: the killed agent's claim long poll may still be held by the server for a while, and
    # a session launched meanwhile would be claimed for the dead agent (reported to the lead).
    sid = launched(cstack)["id"]
    try:
        pid = inspect(sid)["State"]["Pid"]
        agent = next(p for p in cstack.agents if p.poll() is None)
        kill_tree(agent)
        cstack.agents.remove(agent)
        cstack.start_agent(name="ctr", data_dir=cstack.container_agent_dir, env=AGENT_ENV)
        time.sleep(3)  # a few heartbeats: a lost supervisor would be reconciled by now
        assert cstack.api("GET", f"/api/v1/sessions/{sid}")["status"] in ("active", "idle")
        assert inspect(sid)["State"]["Pid"] == pid
    finally:
        stop(cstack, sid)
    assert not container_exists(sid)
