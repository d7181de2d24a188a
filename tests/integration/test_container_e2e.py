"""The container backend end to end, as a user meets it: `berth launch ssh-session --image ... --init-script ...
--packages ...` on a real server with a real container agent (Podman, tests/container_image.py), then `berth ssh`
through the agent tunnel (its default path) with the real OpenSSH client, an outsider refused by the gateway, the
host's view of the container's processes, and stop removing the container.

One launched session serves the whole module (a launch costs seconds here); the tests run in file order and the
last one stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import httpx
import psutil
import pytest
from conftest import BERTH
from container_image import AGENT_ENV, IMAGE, container_exists, ensure_test_image, podman
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")

INIT_FILE = "e2e-init-ran"  # made in the session's home by the init script


@pytest.fixture(scope="module")
def cstack(server_only, tmp_path_factory):
    ensure_test_image()  # fails loudly when it cannot be built
    server_only.start_agent(name="ctr-e2e", data_dir=tmp_path_factory.mktemp("ctr-e2e-agent"), env=AGENT_ENV)
    return server_only


@pytest.fixture(scope="module")
def session(cstack, tmp_path_factory) -> dict:
    # its own project: the default project holds every user, this one only the admin who made it
    cstack.api("POST", "/api/v1/projects", json={"name": "ctr-e2e"})
    script = tmp_path_factory.mktemp("ctr-e2e-init") / "init.sh"
    script.write_text(f"# comments at line start are allowed\necho made-by-init > ~/{INIT_FILE}\n")
    result = cstack.cli("launch", "ssh-session", "--project", "ctr-e2e", "--name", f"e2e-{uuid.uuid4().hex[:8]}",
                        "--image", IMAGE, "--init-script", str(script), "--packages", "six", "--wait", "--json",
                        timeout=300)
    view = json.loads(result.stdout)
    assert view["status"] in ("active", "idle"), cstack.events(view["id"])
    yield view
    if container_exists(view["id"]):  # a test failed before the last one stopped it
        cstack.cli("sessions", "stop", view["id"], check=False)


@pytest.fixture(scope="module")
def outsider(cstack) -> str:
    """A second user, not an admin and not in the session's project."""
    cstack.api("POST", "/api/v1/users", json={"username": "ctr-outsider", "password": "ctr-outsider-pw"})
    r = httpx.post(cstack.url + "/api/v1/auth/login", json={"username": "ctr-outsider", "password": "ctr-outsider-pw"})
    r.raise_for_status()
    return r.json()["token"]


def _uid_base(session_id: str) -> int:
    info = json.loads(podman("container", "inspect", f"berth-{session_id}").stdout)[0]
    return int(info["HostConfig"]["IDMappings"]["UidMap"][0].split(":")[1])


def test_berth_ssh_through_the_tunnel_lands_in_the_image_as_the_session_user(cstack, session):
    # one remote command line: ssh joins its arguments with spaces and the login shell inside runs them
    command = (f"id -u; head -1 /etc/os-release; test -f ~/{INIT_FILE} && echo init-ok; "
               "python -c 'import six; print(\"six\", six.__version__)'")
    result = cstack.cli("ssh", session["id"], "--", command, timeout=60)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "1000", result.stdout + result.stderr
    assert lines[1] == 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"'  # the image's OS, not the host's
    assert lines[2] == "init-ok"
    assert lines[3].startswith("six "), result.stderr  # the package, in the container's Python
    # the default path is the tunnel: the host key is pinned under the session's alias, as `berth ssh` does it
    known = (cstack.home / ".config" / "berth" / "known_hosts").read_text()
    assert f"berth-{session['id']} {session['ssh']['host_key']}" in known


def test_an_outsider_cannot_reach_it(cstack, session, outsider):
    result = subprocess.run([BERTH, "ssh-proxy", session["id"]], capture_output=True, text=True, timeout=60,
                            env=cstack.env(BERTH_TOKEN=outsider), stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and result.stdout == ""
    assert "not found" in result.stderr.lower() or "no session" in result.stderr.lower(), result.stderr
    assert outsider not in result.stderr
    url = cstack.url.replace("http://", "ws://") + f"/s/{session['id']}/ssh"
    with pytest.raises(InvalidStatus) as caught:
        connect(url, additional_headers={"Authorization": f"Bearer {outsider}"}, open_timeout=10)
    assert caught.value.response.status_code == 404


def test_the_containers_processes_never_run_as_host_root(cstack, session):
    """Every process in the container's PID namespace, a login's included, runs as a host uid of its range."""
    sid = session["id"]
    base = _uid_base(sid)
    assert base >= 100_000
    login = subprocess.Popen([BERTH, "ssh", sid, "--", "exec sleep 47.5"], env=cstack.env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, sleeper = time.monotonic() + 30, []
        while not sleeper and time.monotonic() < deadline:
            sleeper = [p for p in psutil.process_iter(["cmdline", "uids"]) if p.info["cmdline"] == ["sleep", "47.5"]]
            time.sleep(0.1)
        assert sleeper, "the login's command never ran"
        assert set(sleeper[0].info["uids"]) == {base + 1000}
        main = json.loads(podman("container", "inspect", f"berth-{sid}").stdout)[0]["State"]["Pid"]
        pid_ns = os.readlink(f"/proc/{main}/ns/pid")
        inside = []
        for p in psutil.process_iter(["uids"]):
            try:
                if os.readlink(f"/proc/{p.pid}/ns/pid") == pid_ns:
                    inside.append(p)
            except OSError:
                continue
        assert sleeper[0].pid in {p.pid for p in inside} and len(inside) >= 3  # main, sshd, the login
        for p in inside:
            uids = p.info["uids"]
            assert uids and min(uids) >= base and max(uids) < base + 65536, (p.pid, p.info, base)
    finally:
        login.kill()
        login.wait()


def test_stop_removes_the_container(cstack, session):
    sid = session["id"]
    cstack.cli("sessions", "stop", sid)
    cstack.wait_status(sid, "stopped", timeout=60)
    listed = podman("ps", "-a", "--filter", f"label=berth.session={sid}", "--format", "{{.Names}}").stdout
    assert listed.strip() == ""
    assert not container_exists(sid)
