"""The Remote Desktop app on the worker (issue #10 point 1): a real agent starts real Xvnc + openbox + xterm as the
session user, VNC on a unix socket only, speaking RFB without a VNC password; type ssh gives the same environment
with an SSH server. Idle: a viewer's input (the tunnel's input stamp) keeps the session alive."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import _stack, session_processes
from test_ssh_session import openssh

DESKTOP_PROGRAMS = {"Xvnc", "openbox", "xterm"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_admin_url):
    """The shared stack, its agent's sessions reporting what keeps them alive every 2 s rather than every 30 s."""
    yield from _stack(tmp_path_factory, pg_admin_url, with_agent=True, agent_env={"BERTH_AGENT_STATUS_REPORT_S": "2"})


def session_dir(stack, session_id: str, agent: str = "agent") -> Path:
    return stack.tmp / f"agent-{agent}" / "sessions" / session_id


def programs(session_id: str) -> dict[str, psutil.Process]:
    return {p.name(): p for p in session_processes(session_id) if p.name() in DESKTOP_PROGRAMS}


def wait_for(check, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def full_update_is_raw_pixels(sock: socket.socket, width: int, height: int) -> None:
    """Ask for the whole framebuffer; its first rectangle arrives as raw pixels (we announced no other encoding)."""
    sock.sendall(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))  # FramebufferUpdateRequest, full
    kind = recv_exactly(sock, 1)[0]
    while kind != 0:  # skip anything else the server sends first (e.g. a Bell or cut text)
        assert kind in (2, 3), kind
        if kind == 3:
            recv_exactly(sock, 3)
            recv_exactly(sock, struct.unpack("!I", recv_exactly(sock, 4))[0])
        kind = recv_exactly(sock, 1)[0]
    recv_exactly(sock, 1)
    (rects,) = struct.unpack("!H", recv_exactly(sock, 2))
    assert rects >= 1
    x, y, w, h, encoding = struct.unpack("!HHHHi", recv_exactly(sock, 12))
    assert encoding == 0 and w * h > 0
    pixels = recv_exactly(sock, w * h * 4)
    assert len(pixels) == w * h * 4


def rfb_connect(path: str) -> tuple[socket.socket, int, int, str]:
    """RFB 3.8 with security None up to ServerInit: (socket, width, height, desktop name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    assert recv_exactly(sock, 12) == b"RFB 003.008\n"
    sock.sendall(b"RFB 003.008\n")
    count = recv_exactly(sock, 1)[0]
    types = recv_exactly(sock, count)
    assert types == b"\x01", types  # None only: the gateway authenticates
    sock.sendall(b"\x01")
    assert recv_exactly(sock, 4) == b"\0\0\0\0"  # SecurityResult OK
    sock.sendall(b"\x01")  # ClientInit: shared
    width, height = struct.unpack("!HH", recv_exactly(sock, 4))
    recv_exactly(sock, 16)  # pixel format
    name = recv_exactly(sock, struct.unpack("!I", recv_exactly(sock, 4))[0]).decode()
    return sock, width, height, name


def launch(stack, *args: str) -> dict:
    return stack.cli_json("launch", "remote-desktop", "--wait", *args, timeout=120)


@pytest.fixture(scope="module")
def desktop(stack):
    view = launch(stack, "--name", "desk-one", "--type", "desktop", "--env", "GREETING=hello desk", "--workspace", "~/desk")
    yield view
    stack.cli("sessions", "stop", view["id"], check=False)


def test_desktop_is_active_and_publishes_a_unix_socket_for_the_tunnel(stack, desktop):
    assert desktop["status"] == "active" and desktop["app"] == "remote-desktop"
    assert desktop["ssh"] is None
    services = json.loads((session_dir(stack, desktop["id"]) / "services.json").read_text())
    assert set(services) == {"vnc", "http"} and services["vnc"]["protocol"] == "rfb" and services["vnc"]["port"] is None
    assert services["http"]["protocol"] == "http" and services["http"]["port"]  # the session's own web app
    path = Path(services["vnc"]["path"])
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    user = f"berth-{desktop['id'][:12]}"
    assert info.st_uid == psutil.Process(programs(desktop["id"])["Xvnc"].pid).uids().real
    parent = os.stat(path.parent)  # root's, the session's group may only traverse: the socket cannot be swapped
    assert parent.st_uid == 0 and stat.S_IMODE(parent.st_mode) == 0o710
    events = stack.events(desktop["id"])
    assert any(line.startswith("desktop: Xvnc :") and line.endswith("(1280x800), openbox, xterm") for line in events), events
    procs = wait_for(lambda: (p := programs(desktop["id"])) and set(p) == DESKTOP_PROGRAMS and p, what="the desktop")
    assert {p.username() for p in procs.values()} == {user}
    xvnc = procs["Xvnc"].cmdline()
    assert "-rfbport" in xvnc and xvnc[xvnc.index("-rfbport") + 1] == "-1"  # no TCP listener
    assert not [c for c in procs["Xvnc"].net_connections("tcp")], "Xvnc listens on no TCP port"


def test_rfb_handshake_without_password_and_pixels(stack, desktop):
    path = json.loads((session_dir(stack, desktop["id"]) / "services.json").read_text())["vnc"]["path"]
    sock, width, height, name = rfb_connect(path)
    try:
        assert (width, height) == (1280, 800)
        assert name == "desk-one"
        full_update_is_raw_pixels(sock, width, height)
    finally:
        sock.close()


def test_session_environment_reaches_the_desktop_programs(stack, desktop):
    procs = wait_for(lambda: (p := programs(desktop["id"])) and "xterm" in p and p, what="xterm")
    env = procs["xterm"].environ()
    assert env["GREETING"] == "hello desk"
    assert env["BERTH_SESSION_ID"] == desktop["id"]
    assert env["DISPLAY"].startswith(":") and env["XAUTHORITY"].endswith("/.berth/Xauthority")
    assert env["HOME"].endswith(f"/{desktop['id']}")
    assert procs["xterm"].cwd() == env["BERTH_WORKSPACE"] == env["HOME"] + "/desk"
    assert stat.S_IMODE(os.stat(env["XAUTHORITY"]).st_mode) == 0o600


def test_the_display_needs_the_sessions_cookie(stack, desktop):
    import subprocess

    env = programs(desktop["id"])["xterm"].environ()
    display = env["DISPLAY"]
    ok = subprocess.run(["xset", "-display", display, "q"], env={"XAUTHORITY": env["XAUTHORITY"], "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    assert "timeout:  0 " in ok.stdout  # no screen saver blanking the desktop
    assert "DPMS is Disabled" in ok.stdout or "does not have the DPMS Extension" in ok.stdout  # no monitor power-off
    refused = subprocess.run(["xset", "-display", display, "q"], env={"XAUTHORITY": "/dev/null", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode != 0


def test_viewer_input_counts_as_activity(stack, desktop):
    from berth.agent.session_services import touch_input

    touch_input(session_dir(stack, desktop["id"]))

    def kept_alive():
        view = stack.api("GET", f"/api/v1/sessions/{desktop['id']}")
        return any(reason.startswith("desktop input") for reason in view.get("kept_alive_by") or [])

    wait_for(kept_alive, timeout=45, what="kept_alive_by to name desktop input (reported every 2 s here)")


def test_the_direct_link_speaks_rfb_with_a_gateway_token(stack, desktop):
    """links.direct is a WebSocket carrying the desktop's RFB bytes: a program with a gateway token gets the VNC
    greeting through the gateway and the tunnel (the token as a header, or as a subprotocol)."""
    from websockets.sync.client import connect

    view = stack.api("GET", f"/api/v1/sessions/{desktop['id']}")
    direct = view["links"]["direct"]
    assert direct.endswith(f"/s/{desktop['id']}/vnc")
    token = stack.api("POST", "/api/v1/tokens", json={"label": "vnc program", "kind": "gateway"})["token"]
    with connect(direct, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=20) as ws:
        assert ws.recv(timeout=20) == b"RFB 003.008\n"
    with connect(direct, subprotocols=[f"berth.token.{token}", "binary"], open_timeout=20) as ws:
        assert ws.subprotocol == "binary"  # the token subprotocol is never echoed back
        assert ws.recv(timeout=20) == b"RFB 003.008\n"


def test_a_desktops_workspace_is_stored_and_restored(stack):
    first = launch(stack, "--name", "desk-ws", "--workspace", "~/work")
    xterm = programs(first["id"])["xterm"]
    workspace = Path(xterm.cwd())
    assert workspace.name == "work"
    note = workspace / "notes.txt"
    # as the session user, like anything the user makes
    subprocess.run(["runuser", "-u", xterm.username(), "--", "sh", "-c", f"echo kept across sessions > {note}"], check=True)
    stack.cli("sessions", "stop", first["id"])
    stack.wait_status(first["id"], "stopped", timeout=60)
    second = launch(stack, "--name", "desk-ws-2", "--workspace", "~/work", "--restore-session", first["id"])
    try:
        assert second["restored_from"] == first["id"]
        restored = Path(programs(second["id"])["xterm"].cwd()) / "notes.txt"
        assert restored.read_text() == "kept across sessions\n"
    finally:
        stack.cli("sessions", "stop", second["id"], check=False)


def test_stop_ends_the_desktop_and_removes_its_sockets(stack, desktop):
    procs = programs(desktop["id"])
    display = procs["xterm"].environ()["DISPLAY"]
    path = json.loads((session_dir(stack, desktop["id"]) / "services.json").read_text())["vnc"]["path"]
    stack.cli("sessions", "stop", desktop["id"])
    stack.wait_status(desktop["id"], "stopped", timeout=30)
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs.values()),
             what="the desktop programs to end")
    assert not session_processes(desktop["id"])
    assert not os.path.lexists(path)
    assert not os.path.lexists(f"/tmp/.X11-unix/X{display[1:]}")
    assert not (session_dir(stack, desktop["id"]) / "services.json").exists()


def test_type_ssh_has_the_environment_and_workspace(stack):
    view = launch(stack, "--name", "desk-ssh", "--type", "ssh", "--env", "GREETING=hello ssh", "--env", "QUOTE=it's $HOME",
                  "--workspace", "~/wk")
    try:
        assert view["status"] == "active" and view["ssh"]["port"]
        services = json.loads((session_dir(stack, view["id"]) / "services.json").read_text())
        assert services["ssh"] == {"protocol": "ssh", "port": view["ssh"]["port"], "host": "127.0.0.1", "path": None, "uid": None}
        assert set(services) == {"ssh", "http"}
        result = openssh(view, 'pwd; echo "$GREETING"; echo "$QUOTE"; echo "$BERTH_SESSION_ID"; command -v berth-sync')
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith(f"/{view['id']}/wk")
        assert lines[1:4] == ["hello ssh", "it's $HOME", view["id"]]
        assert lines[4].endswith("/.berth/bin/berth-sync")
        assert not programs(view["id"])  # no desktop
    finally:
        stack.cli("sessions", "stop", view["id"], check=False)


def test_a_non_root_agent_runs_a_desktop(stack, nonroot_user):
    stack.start_agent(queue="desk-nonroot", name="desk-nonroot", user=nonroot_user)
    view = launch(stack, "--queue", "desk-nonroot", "--name", "desk-user")
    try:
        assert view["status"] == "active"
        procs = wait_for(lambda: (p := programs(view["id"])) and set(p) == DESKTOP_PROGRAMS and p, what="the desktop")
        assert {p.username() for p in procs.values()} == {nonroot_user}
        path = procs["Xvnc"].cmdline()[procs["Xvnc"].cmdline().index("-rfbunixpath") + 1]
        published = Path(path).parent.parent / "vnc.sock"  # moved into the session's socket dir
        sock, width, height, _ = rfb_connect(str(published))
        sock.close()
        assert (width, height) == (1280, 800)
    finally:
        stack.cli("sessions", "stop", view["id"], check=False)
    stack.wait_status(view["id"], "stopped", timeout=30)
    assert not programs(view["id"])
