"""The shareable browser link `/s/<id>/` at the HTTP level, against a real server and agent (SQLite and PostgreSQL):
logged out -> login -> back with a cookie scoped to that one session -> the page; the cookie opens nothing else,
forged or expired ones open nothing, logging out ends them; outsiders and missing sessions get the same 404."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie
from urllib.parse import quote

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from webclient import web_login
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from berth.server.services.gateway_access import COOKIE
from berth.server.services.secretbox import SecretBox


def _launch(stack, *args: str) -> str:
    return stack.cli_json("launch", *args, "--name", f"link-{time.monotonic_ns()}", "--wait")["id"]


@pytest.fixture(scope="module")
def people(stack):
    s = stack
    for name in ("vera", "otto"):  # vera: viewer of the project; otto: in no project of these sessions
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    a = _launch(s, "ssh-session", "--project", "linked")
    b = _launch(s, "ssh-session", "--project", "linked")
    s.api("PUT", "/api/v1/projects/linked/members", json={"username": "vera", "role": "viewer"})
    return {"a": a, "b": b}


def _cookie_header(response: httpx.Response) -> SimpleCookie:
    jar = SimpleCookie()
    for value in response.headers.get_list("set-cookie"):
        jar.load(value)
    return jar


def _open_link(client: httpx.Client, session_id: str) -> httpx.Response:
    """GET the link as a browser would: through the cookie-minting redirect (at most one), not further."""
    first = client.get(f"/s/{session_id}/")
    if first.status_code == 303 and first.headers["location"] == f"/s/{session_id}/":
        return client.get(f"/s/{session_id}/")
    return first


def _gateway_cookie(client: httpx.Client, session_id: str) -> str:
    return next(c.value for c in client.cookies.jar if c.name == COOKIE and c.path == f"/s/{session_id}/")


def test_logged_out_goes_to_login_and_comes_back_with_a_scoped_cookie(stack, people):
    sid = people["a"]
    anonymous = httpx.get(f"{stack.url}/s/{sid}/?from=mail")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == f"/login?next={quote(f'/s/{sid}/', safe='')}"  # the query is dropped

    client, login = web_login(stack.url, "admin", ADMIN_PASSWORD, next_path=f"/s/{sid}/")
    assert login.status_code == 303 and login.headers["location"] == f"/s/{sid}/"
    minted = client.get(f"/s/{sid}/?from=mail")
    assert minted.status_code == 303 and minted.headers["location"] == f"/s/{sid}/"
    assert minted.headers["cache-control"] == "no-store"
    raw = next(v for v in minted.headers.get_list("set-cookie") if v.startswith(COOKIE + "="))
    morsel = _cookie_header(minted)[COOKIE]
    assert morsel["path"] == f"/s/{sid}/"
    assert morsel["httponly"] and morsel["samesite"].lower() == "lax"
    assert morsel["max-age"] == "3600"  # BERTH_GATEWAY_COOKIE_MINUTES: 60
    assert "secure" not in raw.lower()  # plain http here; https (or BERTH_WEB_COOKIE_SECURE) adds it

    page = client.get(f"/s/{sid}/")
    assert page.status_code == 200, page.text
    assert f"berth ssh {sid}" in page.text and f'href="/sessions/{sid}"' in page.text  # an SSH session: how to connect
    assert "password" not in page.text.replace("the password is on the dashboard", "")
    assert "content-security-policy" in page.headers

    # The cookie alone (no browser login) opens the link.
    alone = httpx.Client(base_url=stack.url, cookies={COOKIE: _gateway_cookie(client, sid)})
    assert alone.get(f"/s/{sid}/").status_code == 200


def test_no_slash_is_redirected_by_path_and_forwarded_headers_are_ignored(stack, people):
    sid = people["a"]
    spoofed = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Uri": "/", "X-Forwarded-Prefix": "//evil.example"}
    r = httpx.get(f"{stack.url}/s/{sid}?x=1", headers=spoofed)
    assert r.status_code == 308 and r.headers["location"] == f"/s/{sid}/"
    r = httpx.get(f"{stack.url}/s/{sid}/", headers=spoofed)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next={quote(f'/s/{sid}/', safe='')}"


def test_the_cookie_of_one_session_opens_no_other(stack, people):
    a, b = people["a"], people["b"]
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    assert _open_link(client, a).status_code == 200
    cookie_a = _gateway_cookie(client, a)
    # sent to B by hand (a browser would not: its path is /s/A/): the signature binds it to A
    other = httpx.Client(base_url=stack.url, cookies={COOKIE: cookie_a})
    r = other.get(f"/s/{b}/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert other.get(f"/s/{b}/anything").status_code == 401
    with pytest.raises(InvalidStatus) as refused:  # and the WebSocket of B refuses it
        connect(f"{stack.url.replace('http', 'ws')}/s/{b}/ssh", additional_headers={"Cookie": f"{COOKIE}={cookie_a}"},
                open_timeout=10)
    assert refused.value.response.status_code == 401


def test_forged_and_expired_cookies_go_to_login_on_the_link_and_401_below(stack, people):
    sid = people["a"]
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    assert _open_link(client, sid).status_code == 200
    token_id, expires, signature = _gateway_cookie(client, sid).split(".")
    later = str(int(expires) + 86400)
    past = str(int(time.time()) - 10)
    box = SecretBox.from_settings(None, stack.tmp / "data")  # signed with the server's own key: only the date is wrong
    expired = f"{token_id}.{past}.{box.mac('gateway-cookie', f'{sid}|{token_id}.{past}')}"
    for bad in (f"{token_id}.{expires}.{signature[:-2]}xx", f"{token_id}.{later}.{signature}", expired, "garbage"):
        browserless = httpx.Client(base_url=stack.url, cookies={COOKIE: bad})
        r = browserless.get(f"/s/{sid}/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), bad
        below = browserless.get(f"/s/{sid}/vnc")
        assert below.status_code == 401, below.text
        assert "location" not in below.headers
    # the expired cookie with a live browser login: a new cookie, as on any visit
    old = next(c for c in client.cookies.jar if c.name == COOKIE)
    client.cookies.set(COOKIE, expired, domain=old.domain, path=old.path)  # replaces it
    assert _open_link(client, sid).status_code == 200


def test_logging_out_ends_the_cookie(stack, people):
    sid = people["a"]
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    assert _open_link(client, sid).status_code == 200
    cookie = _gateway_cookie(client, sid)
    home = client.get("/")
    csrf = home.text.split('"X-CSRF-Token": "')[1].split('"')[0]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    alone = httpx.Client(base_url=stack.url, cookies={COOKIE: cookie})
    r = alone.get(f"/s/{sid}/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert alone.get(f"/s/{sid}/x").status_code == 401


def test_an_outsider_and_a_missing_session_get_the_same_404_and_a_viewer_gets_in(stack, people):
    sid = people["a"]
    missing = "0" * len(sid)
    outsider, _ = web_login(stack.url, "otto", "otto-password")
    got, gone = outsider.get(f"/s/{sid}/"), outsider.get(f"/s/{missing}/")
    assert got.status_code == gone.status_code == 404
    assert got.text.replace(sid, missing) == gone.text
    assert not any(c.name == COOKIE for c in outsider.cookies.jar)  # no cookie for a session one cannot read
    token = stack.api("POST", "/api/v1/auth/login", json={"username": "otto", "password": "otto-password"})["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    got, gone = httpx.get(f"{stack.url}/s/{sid}/", headers=bearer), httpx.get(f"{stack.url}/s/{missing}/", headers=bearer)
    assert got.status_code == gone.status_code == 404 and got.text.replace(sid, missing) == gone.text
    assert httpx.get(f"{stack.url}/s/{sid}/x", headers=bearer).status_code == 404

    viewer, _ = web_login(stack.url, "vera", "vera-password")
    assert _open_link(viewer, sid).status_code == 200
    assert httpx.get(f"{stack.url}/s/{sid}/", headers={"Authorization": f"Bearer {stack.token}"}).status_code == 200


def test_a_stopped_session_says_so_and_links_its_dashboard(stack, people):
    sid = _launch(stack, "ssh-session", "--project", "linked")
    stack.api("POST", f"/api/v1/sessions/{sid}/stop")
    stack.wait_status(sid, "stopped")
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    r = _open_link(client, sid)
    assert r.status_code == 409
    assert "is stopped: there is nothing to connect to" in r.text and f'href="/sessions/{sid}"' in r.text


def test_the_desktop_link_page_and_the_links_in_the_view(stack, people):
    sid = _launch(stack, "remote-desktop", "--project", "linked", "--type", "desktop")
    shown = stack.cli_json("sessions", "show", sid)
    assert shown["links"] == {"browser": f"{stack.url}/s/{sid}/", "direct": f"{stack.url.replace('http', 'ws')}/s/{sid}/vnc"}
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    page = _open_link(client, sid)
    assert page.status_code == 200, page.text
    assert f'data-ws-path="/s/{sid}/vnc"' in page.text and '<script type="module" src="/static/desktop.js">' in page.text
    dashboard = client.get(f"/sessions/{sid}")
    assert f'id="browser-link" href="{stack.url}/s/{sid}/" target="_blank"' in dashboard.text
    assert f'<code id="direct-link">{stack.url.replace("http", "ws")}/s/{sid}/vnc</code>' in dashboard.text

    ssh_type = _launch(stack, "remote-desktop", "--project", "linked", "--type", "ssh")
    assert stack.cli_json("sessions", "show", ssh_type)["links"] is None
    assert f"berth ssh {ssh_type}" in _open_link(client, ssh_type).text
    stack.api("POST", f"/api/v1/sessions/{sid}/stop")
    stack.wait_status(sid, "stopped")
    assert stack.cli_json("sessions", "show", sid)["links"] is None


def test_novnc_modules_are_served_and_nothing_else(stack):
    ok = httpx.get(f"{stack.url}/static/vendor/novnc/core/rfb.js")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{stack.url}/static/vendor/novnc/vendor/pako/lib/zlib/inflate.js").status_code == 200
    for path in ("core/../package.json", "core/%2e%2e/package.json", "package.json", "core/util/../../LICENSE.txt",
                 "vendor/pako/README.md", "docs/API.md", "core//rfb.js", "core/.hidden.js"):
        assert httpx.get(f"{stack.url}/static/vendor/novnc/{path}").status_code == 404, path
    assert httpx.get(f"{stack.url}/static/desktop.js").status_code == 200
