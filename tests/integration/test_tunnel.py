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


def test_no_token_is_401_and_unknown_session_404(stack):
    sid = _launch_ssh(stack)
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws_url(stack, f"/s/{sid}/ssh"), open_timeout=10)
    assert caught.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws_url(stack, "/s/000000000000/ssh"), additional_headers={"Authorization": f"Bearer {stack.token}"},
                open_timeout=10)
    assert caught.value.response.status_code == 404
