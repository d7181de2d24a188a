"""SSH through the agent tunnel, end to end: `berth ssh` (ProxyCommand `berth ssh-proxy` over `/s/<id>/ssh`),
`berth ssh-config` entries used by scp and sftp, the proxy's refusals, the browser terminal's WebSocket
(`/s/<id>/terminal`, an SSH client in the server), and a worker in its own network namespace that no client can
reach, only the server."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import time
import uuid

import httpx
import psutil
import pytest
from conftest import BERTH, Stack, kill_tree
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


def _launch(stack, *args: str, app: str = "ssh-session") -> dict:
    return stack.cli_json("launch", app, "--name", f"tun-{uuid.uuid4().hex[:8]}", "--wait", *args)


@pytest.fixture(scope="module")
def session(stack):
    stack.api("POST", "/api/v1/projects", json={"name": "tunnels"})  # the default project has every user in it
    view = _launch(stack, "--project", "tunnels")
    yield view
    stack.cli("sessions", "stop", view["id"], check=False)


@pytest.fixture(scope="module")
def outsider(stack) -> str:
    stack.api("POST", "/api/v1/users", json={"username": "tun-outsider", "password": "tun-outsider-pw"})
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": "tun-outsider", "password": "tun-outsider-pw"})
    r.raise_for_status()
    return r.json()["token"]


# --- berth ssh / ssh-config through the tunnel -------------------------------------------------------------

def test_berth_ssh_runs_a_command_through_the_tunnel(stack, session):
    result = stack.cli("ssh", session["id"], "--", "echo", "hi", timeout=60)
    assert result.stdout.strip() == "hi", result.stderr
    known = (stack.home / ".config" / "berth" / "known_hosts").read_text()
    assert f"berth-{session['id']} {session['ssh']['host_key']}" in known  # pinned under the session's alias


def test_a_remote_desktop_of_type_ssh_is_reached_the_same_way(stack, tmp_path):
    view = _launch(stack, "--project", "tunnels", "--type", "ssh", app="remote-desktop")
    try:
        assert view["ssh"], view
        result = stack.cli("ssh", view["id"], "--", "echo", "desk-$((6*7))", timeout=60)
        assert result.stdout.strip() == "desk-42", result.stderr
        config = tmp_path / "ssh_config"
        stack.cli("ssh-config", "--path", str(config))
        result = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", f"berth-{view['id']}", "echo", "cfg-ok"],
                                capture_output=True, text=True, timeout=60, env=stack.env())
        assert result.stdout.strip() == "cfg-ok", result.stderr
    finally:
        stack.cli("sessions", "stop", view["id"], check=False)


def test_berth_ssh_direct_still_connects_straight(stack, session):
    result = stack.cli("ssh", "--direct", session["id"], "--", "echo", "straight", timeout=60)
    assert result.stdout.strip() == "straight", result.stderr


def test_ssh_config_entries_carry_scp_and_sftp_through_the_tunnel(stack, session, tmp_path):
    config = tmp_path / "ssh_config"
    stack.cli("ssh-config", "--path", str(config))
    text = config.read_text()
    alias = f"berth-{session['id']}"
    assert f"HostKeyAlias {alias}" in text and "ProxyCommand /" in text and " ssh-proxy " in text
    assert f"Port {session['ssh']['port']}" not in text  # no route to the worker's port is assumed
    up = tmp_path / "up.bin"
    up.write_bytes(os.urandom(300_000))
    opts = ["-F", str(config), "-o", "BatchMode=yes"]
    for args in ([str(up), f"{alias}:through.bin"], [f"{alias}:through.bin", str(tmp_path / "back.bin")]):
        result = subprocess.run(["scp", *opts, *args], capture_output=True, text=True, timeout=60, env=stack.env())
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.bin").read_bytes() == up.read_bytes()
    batch = tmp_path / "batch"
    batch.write_text(f"put {up} sftp.bin\nget sftp.bin {tmp_path / 'sftp-back.bin'}\nls\n")
    result = subprocess.run(["sftp", *opts, "-b", str(batch), alias], capture_output=True, text=True, timeout=60,
                            env=stack.env())
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sftp-back.bin").read_bytes() == up.read_bytes()
    assert "through.bin" in result.stdout


def _proxy(stack, session_id: str, **env) -> subprocess.CompletedProcess:
    """`berth ssh-proxy` as ssh would run it, with nothing on stdin."""
    return subprocess.run([BERTH, "ssh-proxy", session_id], capture_output=True, text=True, timeout=60,
                          env=stack.env(**env), stdin=subprocess.DEVNULL)


def test_proxy_refuses_a_wrong_or_missing_token_clearly(stack, session, tmp_path):
    wrong = "ba_" + uuid.uuid4().hex
    result = _proxy(stack, session["id"], BERTH_TOKEN=wrong)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error:") and "token" in result.stderr.lower(), result.stderr
    assert wrong not in result.stderr
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    result = _proxy(stack, session["id"], HOME=str(nobody), BERTH_CONFIG_DIR=str(nobody / "cfg"))
    assert result.returncode == 1 and "not logged in" in result.stderr, result.stderr


def test_proxy_with_an_outsiders_token_is_404(stack, session, outsider):
    result = _proxy(stack, session["id"], BERTH_TOKEN=outsider)
    assert result.returncode == 1
    assert "not found" in result.stderr.lower() or "no session" in result.stderr.lower(), result.stderr
    assert outsider not in result.stderr
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(stack, f"/s/{session['id']}/ssh"), additional_headers={"Authorization": f"Bearer {outsider}"},
                open_timeout=10)
    assert caught.value.response.status_code == 404


def test_proxy_for_an_unknown_session_or_server_fails_with_a_message(stack):
    result = _proxy(stack, "000000000000")
    assert result.returncode == 1 and result.stderr.startswith("error:"), result.stderr
    dead = f"http://127.0.0.1:{_free_port()}"
    result = _proxy(stack, "000000000000", BERTH_SERVER=dead)
    assert result.returncode == 1 and "cannot reach the berth server" in result.stderr, result.stderr


# --- the browser terminal's WebSocket ----------------------------------------------------------------------

def _ws(stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


def _read_until(ws, needle: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, str):
            raise AssertionError(f"control message before {needle!r}: {message}; output so far: {seen!r}")
        seen += message
    return seen


def test_terminal_runs_a_shell_and_closing_it_ends_the_login(stack, session):
    with connect(_ws(stack, f"/s/{session['id']}/terminal?cols=100&rows=30"),
                 additional_headers={"Authorization": f"Bearer {stack.token}"}, open_timeout=20) as ws:
        ws.send(b"stty size; echo pid=$$; echo $((6*7))x\n")
        out = _read_until(ws, b"42x")
        assert b"30 100" in out  # the pty has the size the browser asked for
        ws.send(json.dumps({"type": "resize", "cols": 90, "rows": 20}))
        ws.send(b"stty size\n")
        _read_until(ws, b"20 90")
        ws.send(json.dumps({"type": "resize", "cols": "wide"}))
        error = json.loads(_recv_text(ws))
        assert error["type"] == "error" and error["field"] == "cols"
        pid = int(out.split(b"pid=")[-1].split()[0]) if b"pid=" in out else None
        assert session["ssh"]["password"].encode() not in out
    assert pid and _gone(pid), "closing the terminal leaves the shell running"


def test_terminal_shell_exit_is_reported(stack, session):
    with connect(_ws(stack, f"/s/{session['id']}/terminal"), additional_headers={"Authorization": f"Bearer {stack.token}"},
                 open_timeout=20) as ws:
        ws.send(b"exit 3\n")
        message = json.loads(_recv_text(ws))
    assert message == {"type": "exit", "status": 3}


def test_terminal_refusals(stack, session, outsider):
    url = _ws(stack, f"/s/{session['id']}/terminal")
    cases = [({}, 401), ({"Authorization": f"Bearer {outsider}"}, 404),
             ({"Authorization": f"Bearer {stack.token}", "Origin": "https://evil.example"}, 403)]
    for headers, status in cases:
        with pytest.raises(InvalidStatus) as caught:
            connect(url, additional_headers=headers, open_timeout=10)
        assert caught.value.response.status_code == status, headers
    with pytest.raises(InvalidStatus) as caught:
        connect(url + "?cols=0", additional_headers={"Authorization": f"Bearer {stack.token}"}, open_timeout=10)
    assert caught.value.response.status_code == 422 and b"cols" in caught.value.response.body
    log = (stack.tmp / "server.log").read_text(errors="replace")
    assert session["ssh"]["password"] not in log and stack.token not in log


def _recv_text(ws, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, str):
            return message


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a worker no client can reach -------------------------------------------------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@contextlib.contextmanager
def _namespace(name: str, host_if: str, subnet: str):
    """A network namespace joined to this host by a veth pair: <subnet>.1 here, <subnet>.2 inside, and inside a
    route to that /30 only (no default route: nothing else is reachable from it, nor it from anything else)."""
    peer = host_if[:-1] + "p"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", name)
        _ip("addr", "add", f"{subnet}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{subnet}.2/30", "dev", peer)
        _ip("-n", name, "link", "set", peer, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield
    finally:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", name, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_ssh_reaches_a_worker_in_a_namespace_with_a_route_to_the_server_only(tmp_path, pg_admin_url, monkeypatch):
    from conftest import make_database_url

    tag = uuid.uuid4().hex[:6]
    used = _ip("-4", "-o", "addr").stdout
    free = [n for n in range(256) if f" 10.251.{n}." not in used and f" 10.252.{n}." not in used]
    assert free, "every 10.251.x / 10.252.x subnet is in use on this machine: no room for the test's namespaces"
    pick = random.choice(free)
    worker_net, client_net = f"10.251.{pick}", f"10.252.{pick}"
    monkeypatch.setenv("BERTH_HOST", "0.0.0.0")  # the server answers on the veth addresses too
    stack = Stack(tmp_path, make_database_url(pg_admin_url))
    with _namespace(f"bw{tag}", f"bw{tag}h", worker_net), _namespace(f"bc{tag}", f"bc{tag}h", client_net):
        try:
            stack.start_server()
            stack.login()
            agent_log = open(tmp_path / "agent-ns.log", "ab")
            agent = subprocess.Popen(
                ["ip", "netns", "exec", f"bw{tag}", BERTH, "agent", "--server", f"http://{worker_net}.1:{stack.port}",
                 "--data-dir", str(tmp_path / "agent-ns"), "--name", "caged"],
                env=dict(os.environ, BERTH_AGENT_TOKEN=stack.agent_token, BERTH_AGENT_HEARTBEAT_S="1"),
                stdout=agent_log, stderr=agent_log, cwd="/")
            stack.agents.append(agent)
            deadline = time.monotonic() + 30
            while not any(w["status"] == "online" for w in stack.api("GET", "/api/v1/workers")):
                assert time.monotonic() < deadline and agent.poll() is None, (tmp_path / "agent-ns.log").read_text()[-2000:]
                time.sleep(0.2)
            view = _launch(stack)
            host, port = view["ssh"]["host"], view["ssh"]["port"]
            assert host == f"{worker_net}.2", view["ssh"]
            # the client, in its own namespace, reaches the server and nothing behind it
            client_env = stack.env(BERTH_SERVER=f"http://{client_net}.1:{stack.port}")
            probe = subprocess.run(
                ["ip", "netns", "exec", f"bc{tag}", "python3", "-c",
                 f"import socket; socket.create_connection(('{host}', {port}), timeout=5)"],
                capture_output=True, text=True, timeout=30)
            assert probe.returncode != 0 and ("unreachable" in probe.stderr or "timed out" in probe.stderr), probe.stderr
            result = subprocess.run(["ip", "netns", "exec", f"bc{tag}", BERTH, "ssh", view["id"], "--", "echo", "ok"],
                                    capture_output=True, text=True, timeout=60, env=client_env)
            assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
            direct = subprocess.run(["ip", "netns", "exec", f"bc{tag}", BERTH, "ssh", "--direct", view["id"], "--", "true"],
                                    capture_output=True, text=True, timeout=60, env=client_env)
            assert direct.returncode != 0  # the same session, straight to its port: no route
        finally:
            stack.stop()
            for proc in stack.agents:
                kill_tree(proc)

