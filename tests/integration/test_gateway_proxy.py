"""The direct link to a session's own web app: `/s/<id>/app/...` through the gateway and the agent tunnel, over HTTP
and WebSocket, to a real server the session runs on $BERTH_APP_PORT (tests/gateway_echo.py), with real tokens."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway_echo import app_log, header_names, launch_echo_session

PROJECT = "gwproxy"


def _login(stack, username: str, password: str) -> str:
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    return r.json()["token"]


def gateway_token(stack, api_token: str, **extra) -> dict:
    return stack.api("POST", "/api/v1/tokens", token=api_token, json={"kind": "gateway", "label": "gw", **extra})


@pytest.fixture(scope="module")
def site(stack):
    """The echo session in project gwproxy, a viewer of that project and an outsider, each with a gateway token."""
    for name in ("gwviewer", "gwoutsider"):
        stack.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    view = launch_echo_session(stack, f"gw-{time.monotonic_ns()}", project=PROJECT)
    stack.api("PUT", f"/api/v1/projects/{PROJECT}/members", json={"username": "gwviewer", "role": "viewer"})
    viewer_api = _login(stack, "gwviewer", "gwviewer-password")
    outsider_api = _login(stack, "gwoutsider", "gwoutsider-password")
    return {"id": view["id"], "viewer_api": viewer_api, "viewer": gateway_token(stack, viewer_api)["token"],
            "outsider": gateway_token(stack, outsider_api)["token"], "admin": gateway_token(stack, stack.token)["token"]}


def _get(stack, path: str, token: str | None = None, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(kw.pop("method", "GET"), stack.url + path, headers=headers, timeout=60, **kw)


def _ws(stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


def test_no_token_is_401_over_http_and_websocket(stack, site):
    sid = site["id"]
    for method in ("GET", "POST", "DELETE"):
        r = _get(stack, f"/s/{sid}/app/anything", method=method)
        assert r.status_code == 401, (method, r.status_code, r.text)
        assert "location" not in r.headers  # never a login redirect on a sub-path
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(stack, f"/s/{sid}/app/ws"), open_timeout=10)
    assert caught.value.response.status_code == 401


def test_expired_and_revoked_tokens_are_401(stack, site):
    sid = site["id"]
    short = gateway_token(stack, site["viewer_api"], expires_days=0.00001)  # under a second
    revoked = gateway_token(stack, site["viewer_api"])
    assert _get(stack, f"/s/{sid}/app/", revoked["token"]).status_code == 200
    stack.api("DELETE", f"/api/v1/tokens/{revoked['id']}", token=site["viewer_api"])
    time.sleep(2.2)  # the gateway remembers a grant for BERTH_GATEWAY_GRANT_CACHE_S (2 s) at most
    for token in (short["token"], revoked["token"]):
        r = _get(stack, f"/s/{sid}/app/", token)
        assert r.status_code == 401, r.text
        assert token not in r.text
        with pytest.raises(InvalidStatus) as caught:
            connect(_ws(stack, f"/s/{sid}/app/ws"), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        assert caught.value.response.status_code == 401


def test_outsider_gets_the_same_404_as_for_a_missing_session(stack, site):
    before = len(app_log(stack, site["id"]))
    theirs = _get(stack, f"/s/{site['id']}/app/x", site["outsider"])
    missing = _get(stack, "/s/000000000000/app/x", site["outsider"])
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(site["id"], "ID") == missing.json()["detail"].replace("000000000000", "ID")
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(stack, f"/s/{site['id']}/app/ws"), subprotocols=[f"berth.token.{site['outsider']}"], open_timeout=10)
    assert caught.value.response.status_code == 404
    assert len(app_log(stack, site["id"])) == before  # nothing reached the app


def test_project_viewer_reaches_the_app(stack, site):
    r = _get(stack, f"/s/{site['id']}/app/hello?x=1", site["viewer"])
    assert r.status_code == 200, r.text
    assert r.json()["target"] == "/hello?x=1" and r.json()["method"] == "GET"


def test_get_and_streamed_post_and_download(stack, site):
    sid, token = site["id"], site["admin"]
    assert _get(stack, f"/s/{sid}/app/a%20b/c?q=%2F1&z", token).json()["target"] == "/a%20b/c?q=%2F1&z"  # as sent
    head = _get(stack, f"/s/{sid}/app/x", token, method="HEAD")
    assert head.status_code == 200 and head.content == b""

    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def body():  # chunked: no Content-Length; more than BERTH_MAX_BODY_BYTES (1 MiB) in all
        for _ in range(6):
            digest.update(block)
            yield block

    r = _get(stack, f"/s/{sid}/app/echo", token, method="POST", content=body())
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == 6 * len(block) and r.json()["sha256"] == digest.hexdigest()
    sized = _get(stack, f"/s/{sid}/app/echo", token, method="PUT", content=b"z" * 1000)
    assert sized.json()["bytes"] == 1000 and ["Content-Length", "1000"] in sized.json()["headers"]

    n = 24 * 2**20  # streamed back: the response is read as it comes
    with httpx.stream("GET", f"{stack.url}/s/{sid}/app/big?n={n}", headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as big:
        assert big.status_code == 200
        assert sum(len(part) for part in big.iter_raw()) == n


def test_websocket_echo_with_the_token_as_subprotocol(stack, site):
    sid = site["id"]
    with connect(_ws(stack, f"/s/{sid}/app/ws?room=1"), subprotocols=[f"berth.token.{site['viewer']}", "echo.v1"],
                 open_timeout=20) as ws:
        assert ws.subprotocol == "echo.v1"
        assert ws.recv(timeout=10) == "hello echo.v1"  # the token subprotocol never reached the app
        ws.send("text message")
        assert ws.recv(timeout=10) == "text message"
        payload = bytes(range(256)) * 1024
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send("close-me")
        with pytest.raises(Exception):
            ws.recv(timeout=10)
        assert ws.close_code == 4321 and ws.close_reason == "app says bye"
    entry = [e for e in app_log(stack, sid) if e["target"] == "/ws?room=1"][-1]
    assert site["viewer"] not in json.dumps(entry)


def test_websocket_with_bearer_header(stack, site):
    with connect(_ws(stack, f"/s/{site['id']}/app/ws"), additional_headers={"Authorization": f"Bearer {site['admin']}"},
                 open_timeout=20) as ws:
        assert ws.recv(timeout=10) == "hello "
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"\x00\x01"


def test_what_the_app_sees(stack, site):
    sid, token = site["id"], site["admin"]
    r = _get(stack, f"/s/{sid}/app/seen", token, headers={
        "Cookie": "berth_gw=gw-secret; app_cookie=kept; berth_web=web-secret", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "6.6.6.6", "Forwarded": "host=evil.example", "X_Forwarded_Host": "evil.example",
        "X-Api_Key": "smuggled", "X-Custom": "fine", "Connection": "close, X-Drop-Me", "X-Drop-Me": "1"})
    seen = r.json()
    names = header_names(seen)
    headers = {n.lower(): v for n, v in seen["headers"]}
    assert "authorization" not in names and "forwarded" not in names and "x-drop-me" not in names
    assert not any("_" in n for n in names)
    assert headers["cookie"] == "app_cookie=kept"
    assert headers["host"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{stack.port}"  # ours, as the request reached us
    assert headers["x-forwarded-proto"] == "http" and headers["x-forwarded-prefix"] == f"/s/{sid}/app"
    assert "x-forwarded-for" not in names
    assert headers["x-custom"] == "fine"
    for secret in (token, "gw-secret", "web-secret", "evil.example", "smuggled"):
        assert secret not in json.dumps(seen)


def test_app_cookies_are_kept_to_the_app_path(stack, site):
    r = _get(stack, f"/s/{site['id']}/app/cookies", site["admin"])
    cookies = r.headers.get_list("set-cookie")
    prefix = f"/s/{site['id']}/app"
    assert cookies == [f"plain=1; Path={prefix}/", f"rooted=2; HttpOnly; Path={prefix}/", f"domained=3; Path={prefix}/x"]


def test_nothing_listening_is_502_saying_where_to_listen(stack, site):
    view = stack.cli_json("launch", "ssh-session", "--name", f"noapp-{time.monotonic_ns()}", "--wait")
    r = _get(stack, f"/s/{view['id']}/app/", site["admin"])
    assert r.status_code == 502, r.text
    assert "BERTH_APP_PORT" in r.json()["detail"]
    with pytest.raises(InvalidStatus) as caught:
        connect(_ws(stack, f"/s/{view['id']}/app/ws"), additional_headers={"Authorization": f"Bearer {site['admin']}"},
                open_timeout=20)
    assert caught.value.response.status_code == 502
    stack.api("POST", f"/api/v1/sessions/{view['id']}/stop")


def test_app_port_is_in_the_session_environment(stack, site):
    events = "\n".join(stack.events(site["id"]))
    assert "init: app port " in events and "echo app listening on" in events
    port = events.split("echo app listening on ", 1)[1].split()[0]
    assert events.split("init: app port ", 1)[1].split()[0] == port
