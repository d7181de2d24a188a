"""The web pages at the HTTP level, against a real server (SQLite and PostgreSQL): security headers, the
cookie session, CSRF, login redirects, and the same authorization answers as the API."""

from __future__ import annotations

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

PAGES = ["/login", "/", "/apps/ssh-session", "/apps/remote-desktop"]


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    for name in ("wendy", "otto"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    wendy = s.api("POST", "/api/v1/auth/login", json={"username": "wendy", "password": "wendy-password"})["token"]
    view = s.api("POST", "/api/v1/sessions", token=wendy, json={"app": "ssh-session", "config": {"project": "wendys"}})
    otto = s.api("POST", "/api/v1/auth/login", json={"username": "otto", "password": "otto-password"})["token"]
    s.api("POST", "/api/v1/projects", token=otto, json={"name": "ottos"})
    return {"session": view["id"]}


@pytest.fixture(scope="module")
def admin(server_only):
    client, answer = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303
    yield client
    client.close()


def test_every_page_sends_the_security_headers(server_only, admin):
    for path in PAGES + ["/static/berth.css", "/static/vendor/htmx.min.js", "/sessions/000000000000"]:
        r = admin.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "DENY"


def test_pages_load_no_inline_script_and_nothing_from_elsewhere(server_only, admin):
    for path in PAGES:
        html = admin.get(path).text
        assert "<script>" not in html and " on" + "click=" not in html and "style=" not in html, path
        assert "//cdn" not in html and "https://" not in html, path


def test_vendor_assets_are_an_allow_list(server_only, admin):
    assert admin.get("/static/vendor/htmx.min.js").headers["content-type"].startswith("text/javascript")
    for path in ("/static/vendor/package.json", "/static/vendor/..%2F..%2Fpackage.json", "/static/vendor/htmx.org",
                 "/static/../pyproject.toml", "/static/templates.py", "/static/vendor/%2e%2e/package-lock.json"):
        assert admin.get(path).status_code == 404, path


def test_the_session_cookie_is_httponly_samesite_lax_and_not_secure_over_plain_http(server_only):
    _client, r = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("berth_web="))
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain http here; https: test_web_inprocess


def test_wrong_password_says_so_and_echoes_no_secret(server_only):
    client, r = web_login(server_only.url, "admin", "not-the-password-xyzzy")
    assert r.status_code == 401
    assert "Wrong username or password." in r.text and "not-the-password-xyzzy" not in r.text
    assert "berth_web=" not in " ".join(r.headers.get_list("set-cookie"))
    assert client.get("/").status_code == 303


def test_pages_need_a_login_and_come_back_after_it(server_only):
    anonymous = httpx.Client(base_url=server_only.url, follow_redirects=False)
    r = anonymous.get("/apps/ssh-session", params={"status": "active"})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fapps%2Fssh-session%3Fstatus%3Dactive"
    assert anonymous.get("/apps/ssh-session/rows", headers={"HX-Request": "true"}).headers["hx-redirect"].startswith("/login")
    _client, r = web_login(server_only.url, "admin", ADMIN_PASSWORD, next_path="/apps/ssh-session?status=active")
    assert r.status_code == 303 and r.headers["location"] == "/apps/ssh-session?status=active"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "https://evil.example", "/%09/evil.example",
                                    "/%2F%2Fevil.example", "/%5Cevil.example", "%2F%2Fevil.example", "/%252F%252Fevil.example",
                                    "http:/evil.example", "javascript:alert(1)"])
def test_open_redirect_attempts_land_on_the_home_page(server_only, target):
    _client, r = web_login(server_only.url, "admin", ADMIN_PASSWORD, next_path=target)
    assert r.status_code == 303 and r.headers["location"] == "/"
    # and the login form never carries them either
    form = httpx.get(server_only.url + "/login", params={"next": target})
    assert 'name="next" value="/"' in form.text


def test_state_changing_requests_need_the_csrf_token(server_only, people):
    client, _ = web_login(server_only.url, "wendy", "wendy-password")
    token = page_csrf(client.get("/").text)
    stop = f"/sessions/{people['session']}/stop"
    for headers, data in [({}, None), ({}, {"csrf_token": ""}), ({}, {"csrf_token": "0" * 64}), ({"X-CSRF-Token": "x"}, None),
                          ({"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"}, None)]:
        r = client.post(stop, headers=headers, data=data)
        assert r.status_code == 403 and "security token" in r.text, (headers, data)
    assert server_only.api("GET", f"/api/v1/sessions/{people['session']}")["status"] == "queued"  # nothing happened
    assert client.post("/logout").status_code == 403 and client.get("/").status_code == 200  # still logged in
    # another browser's token is no good either
    other, _ = web_login(server_only.url, "wendy", "wendy-password")
    assert client.post(stop, headers={"X-CSRF-Token": page_csrf(other.get("/").text)}).status_code == 403
    # the login form too: without its token nothing is checked (no throttle count, no session)
    r = httpx.post(server_only.url + "/login", data={"username": "wendy", "password": "wendy-password"})
    assert r.status_code == 403 and "berth_web" not in r.headers.get("set-cookie", "")


def test_the_web_session_and_api_tokens_do_not_stand_in_for_each_other(server_only):
    client, _ = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    web_secret = client.cookies["berth_web"]
    r = httpx.get(server_only.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {web_secret}"})
    assert r.status_code == 401
    assert httpx.get(server_only.url + "/api/v1/users/me", cookies={"berth_token": web_secret}).status_code == 401
    r = httpx.get(server_only.url + "/", cookies={"berth_web": server_only.token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    # browser sessions are not listed among the user's API tokens
    assert all(t["kind"] != "web" for t in server_only.api("GET", "/api/v1/tokens"))


def test_logout_ends_the_session_for_every_copy_of_the_cookie(server_only):
    client, _ = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    stolen = dict(client.cookies)
    token = page_csrf(client.get("/").text)
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'berth_web=""' in r.headers["set-cookie"]
    replay = httpx.get(server_only.url + "/", cookies=stolen, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"] == "/login"


def test_an_outsider_gets_the_same_404_page_as_for_a_missing_session(server_only, people):
    otto, _ = web_login(server_only.url, "otto", "otto-password")
    real, missing = people["session"], "0" * len(people["session"])
    for suffix in ("", "/live"):
        got, none = otto.get(f"/sessions/{real}{suffix}"), otto.get(f"/sessions/{missing}{suffix}")
        assert got.status_code == none.status_code == 404
        assert got.text == none.text.replace(missing, real)
    got = otto.post(f"/sessions/{real}/stop", headers={"X-CSRF-Token": page_csrf(otto.get("/").text)})
    none = otto.post(f"/sessions/{missing}/stop", headers={"X-CSRF-Token": page_csrf(otto.get("/").text)})
    assert got.status_code == none.status_code == 404 and got.text == none.text.replace(missing, real)
    assert real not in otto.get("/apps/ssh-session").text


def test_bad_list_parameters_are_named(server_only, admin):
    for params, field in [({"status": "bogus"}, "status"), ({"page": "0"}, "page"), ({"sort": "owner"}, "sort"),
                          ({"size": "100000"}, "size")]:
        r = admin.get("/apps/ssh-session", params=params)
        assert r.status_code == 422 and f"{field}: " in r.text, params
    assert admin.get("/apps/no-such-app").status_code == 404


HOSTILE = ["\x00", "a\x00b", "line\nbreak", "x" * 5000, "%00", "'; drop table users; --", "<script>", "ü" * 50]


def test_hostile_input_to_the_pages_never_gives_a_5xx(server_only, admin):
    for value in HOSTILE:
        for param in ("project", "tag", "status", "sort", "order", "page", "size"):
            r = admin.get("/apps/ssh-session/rows", params={param: value})
            assert r.status_code < 500, (param, value, r.status_code)
        assert admin.get("/sessions/x/live", params={"known": value}).status_code < 500
        _client, r = web_login(server_only.url, value, value)
        assert r.status_code in (401, 422), (value, r.status_code)
        assert "x" * 200 not in r.text and "\x00" not in r.text
    for raw in ("%ED%A0%80", "%FF", "%00", "%C0%AF"):  # bytes that are no UTF-8, sent as they are
        for param in ("project", "tag", "known"):
            r = admin.get(httpx.URL(f"/apps/ssh-session/rows?{param}={raw}" if param != "known" else f"/sessions/x/live?known={raw}"))
            assert r.status_code < 500, (param, raw, r.status_code)
        r = admin.post("/login", content=f"username={raw}&password={raw}".encode(),
                       headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code < 500, (raw, r.status_code)
    token = page_csrf(admin.get("/").text)
    for body in (b"\xff\xfe", b"csrf_token=" + token.encode() + b"&" + b"a=1&" * 500, b"%zz"):
        r = admin.post("/logout", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code < 500, (body[:20], r.status_code)
