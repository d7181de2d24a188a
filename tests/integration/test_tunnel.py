"""The agent tunnel, end to end: a real server, a real agent, a real session's SSH server reached through
`/s/<id>/ssh` with no route from the client to the worker's port needed."""

from __future__ import annotations

import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


def _ws_url(stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


def _launch_ssh(stack) -> str:
    view = stack.cli_json("launch", "ssh-session", "--name", f"tun-{time.monotonic_ns()}", "--wait")
    return view["id"]


def test_ssh_banner_through_the_tunnel(stack):
    sid = _launch_ssh(stack)
    with connect(_ws_url(stack, f"/s/{sid}/ssh"), additional_headers={"Authorization": f"Bearer {stack.token}"},
                 open_timeout=20) as ws:
        banner = ws.recv(timeout=20)
        assert banner.startswith(b"SSH-2.0-"), banner
    rows = stack.sql("select tunnel_replica from workers where status = 'online'")
    assert rows and all(r[0] for r in rows)
    workers = stack.cli_json("workers", "list")
    assert all(w["tunnel_replica"] and w["tunnel_since"] for w in workers if w["status"] == "online")


def test_no_token_is_401_and_unknown_session_404(stack):
    sid = _launch_ssh(stack)
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws_url(stack, f"/s/{sid}/ssh"), open_timeout=10)
    assert caught.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws_url(stack, "/s/000000000000/ssh"), additional_headers={"Authorization": f"Bearer {stack.token}"},
                open_timeout=10)
    assert caught.value.response.status_code == 404


def _banner(stack, sid: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(_ws_url(stack, f"/s/{sid}/ssh"), additional_headers={"Authorization": f"Bearer {stack.token}"},
                         open_timeout=10) as ws:
                return ws.recv(timeout=10)
        except InvalidStatus as exc:  # 503 while the agent has not reconnected yet
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_the_tunnel_and_the_session_survive_a_server_restart(stack):
    sid = _launch_ssh(stack)
    assert _banner(stack, sid).startswith(b"SSH-2.0-")
    before = stack.sql("select tunnel_replica from workers where status = 'online'")[0][0]
    stack.server.terminate()
    stack.server.wait(20)
    stack.start_server()
    assert _banner(stack, sid).startswith(b"SSH-2.0-")  # the agent reconnected on its own
    view = stack.api("GET", f"/api/v1/sessions/{sid}")
    assert view["status"] in ("active", "idle"), view
    after = stack.sql("select tunnel_replica from workers where status = 'online'")[0][0]
    assert after and after != before  # the new server process holds it now, and says so


def test_a_second_replica_reaches_the_session_through_the_one_holding_the_tunnel(stack):
    """Two server processes on one database: the agent's tunnel is held by the first; the second forwards."""
    import os
    import subprocess

    from conftest import BERTH, free_port, kill_tree, wait_http

    sid = _launch_ssh(stack)
    port = free_port()
    env = dict(os.environ, BERTH_REPLICA_URL=f"http://127.0.0.1:{port}", BERTH_AGENT_TOKEN=stack.agent_token)
    if stack.database_url:
        env["BERTH_DATABASE_URL"] = stack.database_url
    log = open(stack.tmp / "replica2.log", "ab")
    replica = subprocess.Popen([BERTH, "server", "--data-dir", str(stack.tmp / "data"), "--port", str(port)],
                               env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", replica)
        with connect(f"ws://127.0.0.1:{port}/s/{sid}/ssh", additional_headers={"Authorization": f"Bearer {stack.token}"},
                     open_timeout=20) as ws:
            assert ws.recv(timeout=20).startswith(b"SSH-2.0-")
            ws.send(b"SSH-2.0-berth_test\r\n")
            assert ws.recv(timeout=20)  # the server's key exchange offer came back through both replicas
        # outsiders are refused by the replica they reach, before any hop
        with pytest.raises(InvalidStatus) as caught:
            connect(f"ws://127.0.0.1:{port}/s/{sid}/ssh", open_timeout=10)
        assert caught.value.response.status_code == 401
        # the hop itself is for replicas only
        with pytest.raises(InvalidStatus) as caught:
            connect(f"{_ws_url(stack, '/api/v1/replicas/stream')}?worker=x&session={sid}&service=ssh",
                    additional_headers={"x-berth-replica": "1.0"}, open_timeout=10)
        assert caught.value.response.status_code == 403
    finally:
        kill_tree(replica)
