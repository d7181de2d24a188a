"""Attacks known from gateway and auth-proxy advisories, one test each, against the real gateway, tunnel, agent and a
session's own web app (tests/gateway_echo.py, which logs every request it gets)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway_echo import app_log, launch_echo_session
from webclient import web_login

PROJECT = "gwattack"
HOSTILE_LINE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def site(stack):
    """The echo session (its init script also prints HOSTILE_LINE), a project viewer who logs in with a browser, and
    that viewer's session cookie for the link."""
    stack.api("POST", "/api/v1/users", json={"username": "gwweb", "password": "gwweb-password"})
    view = launch_echo_session(stack, f"atk-{time.monotonic_ns()}", project=PROJECT,
                               init_before=f"echo '{HOSTILE_LINE}'\n")
    stack.api("PUT", f"/api/v1/projects/{PROJECT}/members", json={"username": "gwweb", "role": "viewer"})
    client, answer = web_login(stack.url, "gwweb", "gwweb-password")
    assert answer.status_code == 303, answer.text
    entry = client.get(f"/s/{view['id']}/")
    assert entry.status_code == 303, entry.text
    cookie = next(c.split(";", 1)[0] for c in entry.headers.get_list("set-cookie") if c.startswith("berth_gw="))
    yield {"id": view["id"], "browser": client, "cookie": cookie}
    client.close()


def _ws(stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


def _raw(stack, target: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """One request with the target exactly as written (no client-side normalisation of dots, #, or encodings)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _bearer(stack) -> dict:
    return {"Authorization": f"Bearer {stack.token}"}


def test_websocket_upgrade_without_credentials_is_401(stack, site):
    for service in ("app/ws", "vnc", "ssh"):
        with pytest.raises(InvalidStatus) as caught:
            connect(_ws(stack, f"/s/{site['id']}/{service}"), open_timeout=10)
        assert caught.value.response.status_code == 401, service


def test_websocket_from_a_foreign_origin_with_a_valid_cookie_is_refused(stack, site):
    before = len(app_log(stack, site["id"]))
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(stack, f"/s/{site['id']}/app/ws"), open_timeout=10,
                additional_headers={"Cookie": site["cookie"], "Origin": "http://evil.example"})
    assert caught.value.response.status_code == 403
    assert len(app_log(stack, site["id"])) == before
    # the same cookie from our own page opens it: it was the Origin that was refused
    with connect(_ws(stack, f"/s/{site['id']}/app/ws"), open_timeout=10, origin=stack.url,
                 additional_headers={"Cookie": site["cookie"]}) as ws:
        assert ws.recv(timeout=10) == "hello "
    entry = app_log(stack, site["id"])[-1]
    assert not any(n.lower() in ("cookie", "authorization") for n, _ in entry["headers"])
    assert ["Origin", "http://127.0.0.1"] in entry["headers"]


@pytest.mark.parametrize("target", ["//x.example", "/\\x.example", "https://x.example", "/%09/x.example",
                                    "/%2F%2Fx.example", "%252F%252Fx.example", "/\t/x.example", "///x.example",
                                    "http:x.example", "/%5Cx.example", "/%252F%252Fx.example"])
def test_login_redirects_never_leave_the_site(stack, site, target):
    _, answer = web_login(stack.url, "gwweb", "gwweb-password", next_path=target)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert urlsplit(urljoin(stack.url + "/login", location)).netloc == urlsplit(stack.url).netloc, location
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    # already logged in: GET /login?next= redirects at once, by the same rule
    again = site["browser"].get("/login", params={"next": target})
    if again.status_code == 422:  # a control character in the URL: refused outright
        assert "control character" in again.text
        return
    assert again.status_code == 303
    assert urlsplit(urljoin(stack.url + "/login", again.headers["location"])).netloc == urlsplit(stack.url).netloc


def test_query_or_fragment_does_not_make_a_protected_path_public(stack, site):
    sid = site["id"]
    before = len(app_log(stack, sid))
    for target in (f"/s/{sid}/app/?/static/x.css", f"/s/{sid}/vnc?.css", f"/s/{sid}/vnc#.css", f"/s/{sid}/app/x.css",
                   f"/s/{sid}/app/#/static/x", f"/static/../s/{sid}/app/", f"/static/%2e%2e/s/{sid}/app/",
                   f"/s/{sid}/app/%2e%2e/%2e%2e/static/app.css", f"/s/{sid}/app/..%2f..%2fstatic/x",
                   f"/s/{sid}/app;/static/x", f"/s/{sid}/app/?login", f"/healthz/../s/{sid}/app/"):
        status, headers, body = _raw(stack, target)
        assert status in (401, 404), (target, status, body[:200])
        assert "location" not in headers, target
    assert len(app_log(stack, sid)) == before  # nothing reached the app
    # with credentials, dot segments stay inside the same session's app
    status, _, body = _raw(stack, f"/s/{sid}/app/%2e%2e/%2e%2e/000000000000/app/x", _bearer(stack))
    assert status == 200 and json.loads(body)["target"] == "/%2e%2e/%2e%2e/000000000000/app/x"


def test_spoofed_forwarded_host_and_uri_change_neither_redirects_nor_authorization(stack, site):
    sid = site["id"]
    spoof = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Uri": "/static/x.css", "X-Original-URL": "/static/x.css",
             "X-Rewrite-URL": "/static/x.css", "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/evil"}
    status, headers, _ = _raw(stack, f"/s/{sid}/", spoof)  # logged out: to the login page of THIS site
    assert status == 303 and headers["location"] == f"/login?next={quote(f'/s/{sid}/', safe='')}"
    status, headers, _ = _raw(stack, f"/s/{sid}", spoof)
    assert status == 308 and headers["location"] == f"/s/{sid}/"
    status, headers, _ = _raw(stack, f"/s/{sid}/app", spoof)
    assert status == 308 and headers["location"] == f"/s/{sid}/app/"
    assert _raw(stack, f"/s/{sid}/app/x", spoof)[0] == 401  # a public-looking URI header opens nothing
    # the session authorized is the one in the path, whatever the headers name
    status, _, _ = _raw(stack, "/s/000000000000/app/x", {**spoof, **_bearer(stack), "X-Forwarded-Uri": f"/s/{sid}/app/x"})
    assert status == 404
    status, _, body = _raw(stack, f"/s/{sid}/app/seen", {**spoof, **_bearer(stack)})
    seen = {n.lower(): v for n, v in json.loads(body)["headers"]}
    assert seen["x-forwarded-host"] == f"127.0.0.1:{stack.port}" and seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-prefix"] == f"/s/{sid}/app"
    assert "evil" not in body.decode(), body
    assert not {"x-forwarded-uri", "x-original-url", "x-rewrite-url"} & set(seen)


def test_headers_smuggled_with_underscores_never_reach_the_app(stack, site):
    sid = site["id"]
    smuggled = {"X_Forwarded_For": "6.6.6.6", "X-Forwarded_Host": "evil.example", "X_Real_IP": "6.6.6.6",
                "X-Remote_User": "admin", "Authorization_": f"Bearer {stack.token}", "X_Auth_Request_User": "admin"}
    # an Authorization look-alike is no credential
    assert _raw(stack, f"/s/{sid}/app/x", smuggled)[0] == 401
    status, _, body = _raw(stack, f"/s/{sid}/app/smuggle", {**smuggled, **_bearer(stack)})
    assert status == 200
    entry = json.loads(body)
    assert not any("_" in name for name, _ in entry["headers"]), entry["headers"]
    for value in ("6.6.6.6", "evil.example", stack.token):
        assert value not in body.decode()


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_worker_redirect_to_another_worker_is_not_followed(stack, site):
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)  # "another worker's" service
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        elsewhere = f"http://127.0.0.1:{other.server_address[1]}/steal"
        r = httpx.get(f"{stack.url}/s/{site['id']}/app/redirect", params={"to": elsewhere}, headers=_bearer(stack),
                      follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == elsewhere  # passed back as the app said
        with pytest.raises(InvalidStatus) as caught:  # a WebSocket answered with a redirect: refused, not followed
            connect(_ws(stack, f"/s/{site['id']}/app/redirect?to={quote(elsewhere, safe='')}"),
                    additional_headers=_bearer(stack), open_timeout=10)
        assert caught.value.response.status_code == 502
        time.sleep(0.3)
        assert _Recorder.hits == []
    finally:
        other.shutdown()
        other.server_close()


def test_a_token_in_the_url_is_no_credential_and_never_reaches_the_session(stack, site):
    sid = site["id"]
    token = stack.api("POST", "/api/v1/tokens", json={"kind": "gateway", "label": "url"})["token"]
    before = len(app_log(stack, sid))
    for query in ("token", "access_token", "berth_token", "auth"):
        r = httpx.get(f"{stack.url}/s/{sid}/app/x", params={query: token})
        assert r.status_code == 401 and token not in r.text, query
        with pytest.raises(InvalidStatus) as caught:
            connect(_ws(stack, f"/s/{sid}/app/ws?{query}={token}"), open_timeout=10)
        assert caught.value.response.status_code == 401
    assert len(app_log(stack, sid)) == before
    # with real credentials (header, cookie), the app gets neither
    r = httpx.get(f"{stack.url}/s/{sid}/app/who", headers={"Authorization": f"Bearer {token}",
                                                           "Cookie": f"{site['cookie']}; berth_web=x"})
    assert r.status_code == 200
    assert token not in r.text and site["cookie"].split("=", 1)[1] not in r.text
    assert not any(n.lower() in ("authorization", "cookie") for n, _ in r.json()["headers"])


def test_html_in_console_lines_is_escaped_on_the_dashboard_and_in_the_sse_stream(stack, site):
    sid, browser = site["id"], site["browser"]
    assert HOSTILE_LINE in "\n".join(stack.events(sid))  # the line is in the console as the session wrote it
    page = browser.get(f"/sessions/{sid}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "onerror=alert" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # an inline script would not run anyway
    with browser.stream("GET", f"/sessions/{sid}/console/stream", headers={"Accept": "text/event-stream"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-content-type-options"] == "nosniff"  # never rendered as a page
        text = ""
        for chunk in stream.iter_text():
            text += chunk
            if "onerror" in text and text.endswith("\n\n"):
                break
    frames = [f for f in text.split("\n\n") if f.startswith("id: ")]
    for frame in frames:  # every event is "id:" + one "data:" line of JSON: a line cannot forge events
        lines = frame.split("\n")
        assert len(lines) == 2 and lines[1].startswith("data: ")
    messages = [json.loads(f.split("\n")[1][6:])["message"] for f in frames]
    assert any(HOSTILE_LINE in m for m in messages)
    script = browser.get("/static/dashboard.js").text  # the page adds lines as text nodes, never as HTML
    assert "document.createTextNode(\" \" + line.message)" in script and "innerHTML" not in script


def test_a_session_app_page_runs_sandboxed_so_it_cannot_act_as_its_visitor(stack, site):
    """The app is served on berth's origin: without the sandbox its scripts could read berth's pages (CSRF tokens)
    with the visitor's cookie. Every app answer carries a CSP sandbox without allow-same-origin."""
    status, headers, _ = _raw(stack, f"/s/{site['id']}/app/", {"Cookie": site["cookie"]})
    assert status == 200
    policy = headers.get("content-security-policy", "")
    assert policy.startswith("sandbox ") and "allow-same-origin" not in policy, policy


def test_another_users_program_squatting_the_app_port_gets_no_traffic(stack, site):
    """The session's app port is only picked, not reserved: a program of another user that binds it first must not
    receive the session's visitors (or their requests)."""
    import subprocess

    view = stack.cli_json("launch", "ssh-session", "--name", f"squat-{time.monotonic_ns()}", "--wait")
    services = json.loads((stack.tmp / "agent-agent" / "sessions" / view["id"] / "services.json").read_text())
    port = services["http"]["port"]
    squatter = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c",
         "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(('127.0.0.1', {port})); s.listen(); print('listening', flush=True)\n"
         "c,_=s.accept(); print('GOT', c.recv(100), flush=True)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "listening"
        status, _headers, body = _raw(stack, f"/s/{view['id']}/app/", _bearer(stack))
        assert status == 502, body
        time.sleep(0.5)
        assert squatter.poll() is None  # it never accepted a connection
    finally:
        squatter.kill()
        squatter.wait()
        stack.api("POST", f"/api/v1/sessions/{view['id']}/stop")
