"""The Remote Desktop inside a container (issue #11 point 4): a real container agent (Podman, tests/container_image.py)
whose worker image (BERTH_AGENT_CONTAINER_IMAGE) holds Xvnc, openbox and xterm; the desktop speaks RFB on the
published socket, its programs run inside the container as the mapped host uid, the console says which isolation
the session got (no Sysbox here: runc, and why systemd and Docker cannot run inside), an outsider gets 404, and
stop removes the container. An image without Xvnc fails at once, naming the image and what it lacks.

One desktop serves the module (a launch costs seconds); the tests run in file order and the last one stops it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from container_image import AGENT_ENV, IMAGE, container_exists, ensure_test_image, podman
from test_remote_desktop_worker import DESKTOP_PROGRAMS, full_update_is_raw_pixels, programs, rfb_connect, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")

QUEUE, BARE_QUEUE = "ctr-desk", "ctr-desk-bare"
BARE_IMAGE = "localhost/berth-test-no-xvnc:bookworm"
NO_SYSBOX = ("isolation: runc container in its own user namespace; sysbox-runc is not installed on this worker, "
             "so systemd and Docker cannot run inside")


def image_without_xvnc() -> str:
    """The test image less Xvnc and xterm: made by removing them from a created (never started) container."""
    name = "berth-test-no-xvnc-build"
    podman("rm", "--force", name, check=False)
    podman("create", "--name", name, IMAGE, "/bin/true")
    try:
        root = podman("mount", name).stdout.strip()
        for path in ("usr/bin/Xvnc", "usr/bin/Xtigervnc", "usr/bin/xterm"):
            if os.path.lexists(os.path.join(root, path)):
                os.unlink(os.path.join(root, path))
        podman("unmount", name)
        podman("commit", "--quiet", name, BARE_IMAGE)
    finally:
        podman("rm", "--force", name, check=False)
    return BARE_IMAGE


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ctr-desk-agent")


@pytest.fixture(scope="module")
def cstack(server_only, agent_dir):
    ensure_test_image()  # fails loudly when it cannot be built
    server_only.start_agent(name="ctr-desk", queue=QUEUE, data_dir=agent_dir,
                            env={**AGENT_ENV, "BERTH_AGENT_CONTAINER_IMAGE": IMAGE})
    return server_only


@pytest.fixture(scope="module")
def desktop(cstack) -> dict:
    cstack.api("POST", "/api/v1/projects", json={"name": "ctr-desk"})  # only the admin who made it
    view = cstack.cli_json("launch", "remote-desktop", "--project", "ctr-desk", "--queue", QUEUE, "--name", "ctr-desk-one",
                           "--env", "GREETING=hello container", "--workspace", "~/desk", "--wait", timeout=300)
    assert view["status"] in ("active", "idle"), cstack.events(view["id"])
    yield view
    if container_exists(view["id"]):  # a test failed before the last one stopped it
        cstack.cli("sessions", "stop", view["id"], check=False)


def _vnc_path(agent_dir: Path, session_id: str) -> str:
    return json.loads((agent_dir / "sessions" / session_id / "services.json").read_text())["vnc"]["path"]


def _uid_base(session_id: str) -> int:
    info = json.loads(podman("container", "inspect", f"berth-{session_id}").stdout)[0]
    return int(info["HostConfig"]["IDMappings"]["UidMap"][0].split(":")[1])


def test_the_console_says_which_isolation_the_desktop_got(cstack, desktop):
    events = cstack.events(desktop["id"])
    lines = [line for line in events if "isolation: " in line]
    assert len(lines) == 1 and lines[0].endswith(NO_SYSBOX), events
    assert f"container {IMAGE} (podman" in lines[0]  # the worker's image: the desktop names none
    assert any(line.startswith("desktop: Xvnc :") for line in events), events


def test_rfb_handshake_and_a_framebuffer_update_from_inside_the_container(agent_dir, desktop):
    path = _vnc_path(agent_dir, desktop["id"])
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and info.st_uid == _uid_base(desktop["id"]) + 1000
    sock, width, height, name = rfb_connect(path)
    try:
        assert (width, height) == (1280, 800) and name == "ctr-desk-one"
        full_update_is_raw_pixels(sock, width, height)
    finally:
        sock.close()


def test_the_desktop_runs_inside_the_container_as_the_mapped_user(cstack, desktop):
    sid = desktop["id"]
    base = _uid_base(sid)
    procs = wait_for(lambda: (p := programs(sid)) and set(p) == DESKTOP_PROGRAMS and p, what="the desktop")
    main = json.loads(podman("container", "inspect", f"berth-{sid}").stdout)[0]["State"]["Pid"]
    for proc in procs.values():
        assert set(proc.uids()) == {base + 1000} and 0 not in proc.uids(), (proc.name(), proc.uids())
        assert os.readlink(f"/proc/{proc.pid}/ns/pid") == os.readlink(f"/proc/{main}/ns/pid") != os.readlink("/proc/self/ns/pid")
    env = procs["xterm"].environ()
    assert env["GREETING"] == "hello container" and env["BERTH_SESSION_ID"] == sid
    assert env["XAUTHORITY"] == env["HOME"] + "/.berth/Xauthority"
    assert procs["xterm"].cwd() == env["HOME"] + "/desk"
    # the X sockets are the container's own, in its /tmp/.X11-unix (root's inside, sticky), not the worker's
    listing = podman("exec", "--user", "1000:1000", f"berth-{sid}", "sh", "-c",
                     "stat -c '%u %a' /tmp/.X11-unix; ls /tmp/.X11-unix").stdout.split("\n")
    assert listing[0] == "0 1777" and f"X{env['DISPLAY'][1:]}" in listing[1:], listing


def test_an_outsider_gets_404_on_the_desktops_page(cstack, desktop):
    cstack.api("POST", "/api/v1/users", json={"username": "ctr-desk-outsider", "password": "ctr-desk-outsider-pw"})
    login = httpx.post(cstack.url + "/api/v1/auth/login",
                       json={"username": "ctr-desk-outsider", "password": "ctr-desk-outsider-pw"})
    login.raise_for_status()
    token = login.json()["token"]
    page = httpx.get(f"{cstack.url}/s/{desktop['id']}/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert page.status_code == 404 and token not in page.text


def test_stop_removes_the_container(cstack, agent_dir, desktop):
    sid = desktop["id"]
    path = _vnc_path(agent_dir, sid)
    procs = programs(sid)
    cstack.cli("sessions", "stop", sid)
    cstack.wait_status(sid, "stopped", timeout=60)
    assert not container_exists(sid)
    wait_for(lambda: not any(p.is_running() for p in procs.values()), what="the desktop programs to end")
    assert not os.path.lexists(path)


def test_an_image_without_xvnc_fails_naming_the_image_and_what_is_missing(cstack, tmp_path_factory):
    bare = image_without_xvnc()
    cstack.start_agent(name="ctr-desk-bare", queue=BARE_QUEUE, data_dir=tmp_path_factory.mktemp("ctr-desk-bare-agent"),
                       env={**AGENT_ENV, "BERTH_AGENT_CONTAINER_IMAGE": bare})
    result = cstack.cli("launch", "remote-desktop", "--queue", BARE_QUEUE, "--name", "ctr-desk-bare", "--wait", "--json",
                        check=False, timeout=300)
    view = cstack.api("GET", "/api/v1/sessions", params={"status": ["failed"]})
    failed = [v for v in view if v["name"] == "ctr-desk-bare"]
    assert failed, result.stdout + result.stderr
    events = cstack.events(failed[0]["id"])
    expected = (f"the desktop needs Xvnc, openbox, xterm and the image {bare} lacks Xvnc (package "
                "tigervnc-standalone-server), xterm (package xterm): install them there")
    assert any(expected in line for line in events), events
    assert not container_exists(failed[0]["id"])
    subprocess.run(["podman", "rmi", "--force", bare], capture_output=True, timeout=120)


def test_a_worker_without_an_image_for_desktops_says_which_setting_to_set(cstack, tmp_path_factory):
    cstack.start_agent(name="ctr-desk-none", queue="ctr-desk-none", data_dir=tmp_path_factory.mktemp("ctr-desk-none"),
                       env=AGENT_ENV)
    view = cstack.api("POST", "/api/v1/sessions", json={"app": "remote-desktop",
                                                        "config": {"name": "ctr-desk-none", "queue": "ctr-desk-none"}})
    cstack.wait_status(view["id"], "failed", timeout=60)
    events = cstack.events(view["id"])
    assert any("names no image" in line and "BERTH_AGENT_CONTAINER_IMAGE" in line for line in events), events
