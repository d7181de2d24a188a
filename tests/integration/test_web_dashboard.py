"""The dashboard's data routes at the HTTP level, against a real server (SQLite and PostgreSQL): the charts' JSON
and the console's server-sent events answer as the API does (viewer: reads; outsider: the same 404 as for a
missing session), and Extend / Sync now refuse viewers and forged requests."""

from __future__ import annotations

import json
import time

import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

from berth.server.web.streams import STREAM_WAIT_S


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    for name in ("dana", "vic", "oscar"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    dana = s.api("POST", "/api/v1/auth/login", json={"username": "dana", "password": "dana-password"})["token"]
    s.api("POST", "/api/v1/projects", token=dana, json={"name": "danas"})
    s.api("PUT", "/api/v1/projects/danas/members", token=dana, json={"username": "vic", "role": "viewer"})
    running = s.api("POST", "/api/v1/sessions", token=dana, json={"app": "ssh-session", "config": {"project": "danas", "name": "<b>dash</b>"}})
    ended = s.api("POST", "/api/v1/sessions", token=dana, json={"app": "ssh-session", "config": {"project": "danas"}})
    s.api("POST", f"/api/v1/sessions/{ended['id']}/stop", token=dana)
    clients = {name: web_login(s.url, name, f"{name}-password")[0] for name in ("dana", "vic", "oscar")}
    yield {"running": running["id"], "ended": ended["id"], **clients}
    for client in clients.values():
        client.close()


def _events(client, session_id: str) -> tuple[int, list[tuple[str, str]]]:
    """The stream of an ended session: every line, then `end`, then the server closes it."""
    out = []
    with client.stream("GET", f"/sessions/{session_id}/console/stream") as r:
        if r.status_code != 200:
            return r.status_code, []
        assert r.headers["content-type"].startswith("text/event-stream")
        event = "message"
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, line[6:]))
                event = "message"
    return 200, out


def test_a_viewer_reads_the_charts_and_the_console(people):
    r = people["vic"].get(f"/sessions/{people['running']}/metrics.json?range=15m")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["range"] == "15m" and body["t"] == [] and body["gpu"] is False
    assert set(body["series"]) >= {"cpu", "mem_mb", "net_rx_mbs", "disk_write_mbs", "gpu_util", "gpu_mem_used_mb"}
    status, events = _events(people["vic"], people["ended"])
    assert status == 200 and events[-1][0] == "end"
    lines = [json.loads(data)["message"] for kind, data in events if kind == "message"]
    assert any("stopped" in line for line in lines), lines


def test_the_stream_resumes_after_the_last_event_id(people):
    started = time.monotonic()
    _status, events = _events(people["dana"], people["ended"])
    ids = [json.loads(d)["id"] for k, d in events if k == "message"]
    with people["dana"].stream("GET", f"/sessions/{people['ended']}/console/stream",
                               headers={"Last-Event-ID": str(ids[-1])}) as r:
        rest = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert rest == ["data: {}"]  # only the end
    # an ended session's streams end once its lines are out, without waiting out the keep-alive interval
    assert time.monotonic() - started < STREAM_WAIT_S


def test_an_outsider_gets_the_same_404_as_for_a_missing_session(people):
    for path in ("", "/metrics.json", "/console/stream", "/live"):
        outsider = people["oscar"].get(f"/sessions/{people['running']}{path}")
        missing = people["oscar"].get(f"/sessions/000000000000{path}")
        assert outsider.status_code == missing.status_code == 404, path
        assert outsider.text.replace(people["running"], "X") == missing.text.replace("000000000000", "X"), path


def test_bad_range_is_named(people):
    r = people["dana"].get(f"/sessions/{people['running']}/metrics.json?range=2y")
    assert r.status_code == 422 and "range" in r.text


def test_a_viewer_sees_no_buttons_and_its_forged_posts_are_refused(people):
    page = people["vic"].get(f"/sessions/{people['running']}")
    assert page.status_code == 200
    assert 'id="extend"' not in page.text and 'id="stop"' not in page.text and 'id="clone"' not in page.text
    assert "&lt;b&gt;dash&lt;/b&gt;" in page.text and "<b>dash</b>" not in page.text
    token = page_csrf(page.text)
    for action, data in (("extend", {"hours": "4"}), ("sync", {}), ("stop", {})):
        r = people["vic"].post(f"/sessions/{people['running']}/{action}", data={**data, "csrf_token": token})
        assert r.status_code == 403, action


def test_extend_and_sync_need_the_csrf_token_and_a_running_session(people):
    page = people["dana"].get(f"/sessions/{people['running']}")
    token = page_csrf(page.text)
    assert people["dana"].post(f"/sessions/{people['running']}/extend", data={"hours": "4"}).status_code == 403
    # queued is not running yet: the service's own answer (409), as the API gives
    assert people["dana"].post(f"/sessions/{people['running']}/extend", data={"hours": "4", "csrf_token": token}).status_code == 409
    assert people["dana"].post(f"/sessions/{people['running']}/sync", data={"csrf_token": token}).status_code == 409
    for bad in ("", "x", "0", "-1", "nan", "inf", "99999"):
        r = people["dana"].post(f"/sessions/{people['running']}/extend", data={"hours": bad, "csrf_token": token})
        assert r.status_code == 422 and "hours" in r.text, bad


def test_the_dashboard_scripts_are_served(server_only):
    client, _ = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    for path in ("/static/dashboard.js", "/static/vendor/uPlot.iife.min.js", "/static/vendor/uPlot.min.css"):
        assert client.get(path).status_code == 200, path
    client.close()


def test_berth_server_stops_at_once_with_a_console_stream_open(tmp_path):
    """The console's stream waits on the notifier like every long poll: at shutdown it ends, it does not hold it."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import httpx
    from conftest import free_port, wait_http

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HOME=str(tmp_path), BERTH_ADMIN_PASSWORD="stream-test-password")
    env.pop("BERTH_DATABASE_URL", None)
    berth = str(Path(sys.executable).with_name("berth"))
    server = subprocess.Popen([berth, "server", "--data-dir", str(tmp_path / "data"), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"{url}/healthz", server)
        token = httpx.post(f"{url}/api/v1/auth/login", json={"username": "admin", "password": "stream-test-password"}).json()["token"]
        view = httpx.post(f"{url}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"},
                          json={"app": "ssh-session", "config": {}}).json()  # queued: no agent, the stream stays open
        client, _ = web_login(url, "admin", "stream-test-password")
        got: list[str] = []
        opened = threading.Event()

        def read():
            with client.stream("GET", f"/sessions/{view['id']}/console/stream") as r:
                for line in r.iter_lines():
                    got.append(line)
                    if line.startswith("data: "):
                        opened.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert opened.wait(10), got
        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)
        took = time.monotonic() - started
        reader.join(5)
        assert not reader.is_alive(), "the stream was left open"
        assert took < 1.0, f"berth server took {took:.2f} s to stop with a stream open"
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
