"""The settings and admin pages at the HTTP level, against a real server (SQLite and PostgreSQL): password change
(and what it ends), SSH keys, tokens shown once, project members, users (admins only), workers and queues;
CSRF on every form, the same authorization answers as the API, hostile input shown as text."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5Zm9ydGhlc2V0dGluZ3NwYWdlMTIzNDU2 carol@laptop"
XSS = "<img src=x onerror=alert(1)>"


def _login(url: str, username: str, password: str) -> httpx.Client:
    client, answer = web_login(url, username, password)
    assert answer.status_code == 303, answer.text
    return client


def _post(client: httpx.Client, path: str, data: dict, page: str = "/settings") -> httpx.Response:
    return client.post(path, data={"csrf_token": page_csrf(client.get(page).text), **data})


def _api_login(s, username: str, password: str) -> str:
    return s.api("POST", "/api/v1/auth/login", json={"username": username, "password": password})["token"]


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    for name in ("carol", "dave", "erin", "pat"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    carol = _api_login(s, "carol", "carol-password")
    s.api("POST", "/api/v1/projects", token=carol, json={"name": "carols"})
    s.api("PUT", "/api/v1/projects/carols/members", token=carol, json={"username": "dave", "role": "viewer"})
    erin = _api_login(s, "erin", "erin-password")
    s.api("POST", "/api/v1/projects", token=erin, json={"name": "erins-secret"})
    return {"carol": carol}


def test_password_change_needs_the_current_one_and_ends_the_other_sessions_and_tokens(server_only, people):
    url = server_only.url
    this = _login(url, "pat", "pat-password")
    other = _login(url, "pat", "pat-password")
    api_token = _api_login(server_only, "pat", "pat-password")
    assert other.get("/settings").status_code == 200

    wrong = _post(this, "/settings/password", {"current_password": "not-it-123", "new_password": "pat-new-password",
                                               "new_password_again": "pat-new-password"})
    assert wrong.status_code == 422
    assert re.search(r'id="e-current_password">that is not your current password<', wrong.text)
    assert "not-it-123" not in wrong.text and "pat-new-password" not in wrong.text
    differ = _post(this, "/settings/password", {"current_password": "pat-password", "new_password": "pat-new-password",
                                                "new_password_again": "pat-new-passwordX"})
    assert differ.status_code == 422 and 'id="e-new_password_again">the two new passwords differ<' in differ.text
    short = _post(this, "/settings/password", {"current_password": "pat-password", "new_password": "short",
                                               "new_password_again": "short"})
    assert short.status_code == 422 and 'id="e-new_password"' in short.text and "8 characters" in short.text
    assert other.get("/settings").status_code == 200  # nothing changed yet

    done = _post(this, "/settings/password", {"current_password": "pat-password", "new_password": "pat-new-password",
                                              "new_password_again": "pat-new-password"})
    assert done.status_code == 303 and done.headers["location"].startswith("/settings?saved=password")
    assert "Password changed" in this.get(done.headers["location"]).text  # this browser stays logged in
    assert other.get("/settings").status_code == 303  # the other one is logged out
    r = httpx.get(url + "/api/v1/users/me", headers={"Authorization": f"Bearer {api_token}"})
    assert r.status_code == 401  # API tokens opened with the old password are revoked
    assert web_login(url, "pat", "pat-password")[1].status_code == 401
    assert web_login(url, "pat", "pat-new-password")[1].status_code == 303


def test_the_api_changes_passwords_too_keeping_the_calling_token(server_only, people):
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "quinn", "password": "quinn-password"})
    caller, other = _api_login(s, "quinn", "quinn-password"), _api_login(s, "quinn", "quinn-password")
    browser = _login(s.url, "quinn", "quinn-password")

    def change(current, new, token=caller):
        return httpx.post(s.url + "/api/v1/users/me/password", headers={"Authorization": f"Bearer {token}"},
                          json={"current_password": current, "new_password": new})

    r = change("wrong-password", "quinn-password-2")
    assert r.status_code == 422 and r.json()["field"] == "current_password" and "wrong-password" not in r.text
    r = change("quinn-password", "short")
    assert r.status_code == 422 and r.json()["field"] == "new_password"
    r = change("quinn-password", "quinn-password-2")
    assert r.status_code == 200 and r.json()["ended"] == 2  # the other token and the browser session
    assert s.api("GET", "/api/v1/users/me", token=caller)["username"] == "quinn"
    assert httpx.get(s.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {other}"}).status_code == 401
    assert browser.get("/settings").status_code == 303
    assert _api_login(s, "quinn", "quinn-password-2")


def test_ssh_keys_are_added_validated_listed_and_removed(server_only, people):
    carol = _login(server_only.url, "carol", "carol-password")
    bad = _post(carol, "/settings/ssh-keys", {"key": "not a key " + XSS})
    assert bad.status_code == 422 and 'id="e-key">not an OpenSSH public key line<' in bad.text
    assert XSS not in bad.text and "&lt;img src=x onerror=alert(1)&gt;" in bad.text  # echoed back as text
    huge = _post(carol, "/settings/ssh-keys", {"key": "ssh-ed25519 " + "A" * 20000})
    assert huge.status_code == 422 and "at most 16384" in huge.text and "A" * 20000 not in huge.text
    r = _post(carol, "/settings/ssh-keys", {"key": KEY})
    assert r.status_code == 303
    page = carol.get(r.headers["location"]).text
    assert "SSH key added." in page and "carol@laptop" in page
    assert server_only.api("GET", "/api/v1/users/me/ssh-keys", token=people["carol"])["keys"] == [KEY]
    assert _post(carol, "/settings/ssh-keys/remove", {"key": "ssh-ed25519 AAAAother"}).status_code == 404
    assert _post(carol, "/settings/ssh-keys/remove", {"key": KEY}).status_code == 303
    assert server_only.api("GET", "/api/v1/users/me/ssh-keys", token=people["carol"])["keys"] == []


def test_a_token_secret_is_shown_once_and_the_token_can_be_revoked(server_only, people):
    carol = _login(server_only.url, "carol", "carol-password")
    r = _post(carol, "/settings/tokens", {"label": XSS, "kind": "gateway", "expires_days": "7"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    secret = re.search(r'<code id="new-token">([^<]+)</code>', r.text).group(1)
    assert XSS not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert httpx.get(server_only.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"}).json()["username"] == "carol"
    again = carol.get("/settings")
    assert secret not in again.text and "&lt;img src=x onerror=alert(1)&gt;" in again.text
    token_id = re.search(r'action="/settings/tokens/([^/"]+)/revoke"', again.text).group(1)
    assert _post(carol, f"/settings/tokens/{token_id}/revoke", {}).status_code == 303
    assert httpx.get(server_only.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert "revoked" in carol.get("/settings").text
    # someone else's token: the answer a missing one gets
    dave = _login(server_only.url, "dave", "dave-password")
    assert _post(dave, f"/settings/tokens/{token_id}/revoke", {}).status_code == 404


def test_token_form_errors_name_the_field(server_only, people):
    carol = _login(server_only.url, "carol", "carol-password")
    for data, field in [({"label": "x" * 200, "expires_days": "7"}, "label"), ({"label": "ok", "expires_days": "-1"}, "expires_days"),
                        ({"label": "ok", "expires_days": "soon"}, "expires_days"), ({"label": "ok", "kind": "agent"}, "kind"),
                        ({"label": "a\x07b", "expires_days": "1"}, "label")]:
        r = _post(carol, "/settings/tokens", data)
        assert r.status_code == 422, (data, r.status_code)
        assert 'class="field-error"' in r.text and f'name="{field}"' in r.text, data
        assert '<code id="new-token">' not in r.text


def test_every_form_needs_the_csrf_token(server_only, people):
    admin = _login(server_only.url, "admin", ADMIN_PASSWORD)
    forms = {"/settings/password": {"current_password": ADMIN_PASSWORD, "new_password": "x" * 12, "new_password_again": "x" * 12},
             "/settings/ssh-keys": {"key": KEY}, "/settings/ssh-keys/remove": {"key": KEY},
             "/settings/tokens": {"label": "forged"}, "/settings/tokens/abc/revoke": {},
             "/projects/carols/members": {"username": "erin", "role": "admin"},
             "/users": {"username": "forged", "password": "forged-password"}}
    for path, data in forms.items():
        for token in (None, "0" * 64):
            r = admin.post(path, data=data if token is None else {**data, "csrf_token": token})
            assert r.status_code == 403 and "security token" in r.text, path
    assert web_login(server_only.url, "admin", ADMIN_PASSWORD)[1].status_code == 303  # password unchanged
    assert "forged" not in admin.get("/users").text


def test_projects_members_are_managed_by_project_admins_only(server_only, people):
    carol = _login(server_only.url, "carol", "carol-password")
    dave = _login(server_only.url, "dave", "dave-password")
    page = carol.get("/projects")
    assert page.status_code == 200 and "carols" in page.text and "erins-secret" not in page.text
    r = _post(carol, "/projects/carols/members", {"username": "erin", "role": "member"}, page="/projects/carols")
    assert r.status_code == 303
    members = carol.get("/projects/carols").text
    assert 'data-member="erin"' in members and 'action="/projects/carols/members"' in members
    assert {m["username"]: m["role"] for m in server_only.api("GET", "/api/v1/projects/carols/members", token=people["carol"])} == \
        {"carol": "admin", "dave": "viewer", "erin": "member"}
    # dave only views: the list, no forms; a forged POST (with his own valid CSRF token) is refused
    view = dave.get("/projects/carols")
    assert view.status_code == 200 and 'data-member="carol"' in view.text and 'action="/projects/carols/members"' not in view.text
    forged = _post(dave, "/projects/carols/members", {"username": "dave", "role": "admin"}, page="/projects/carols")
    assert forged.status_code == 403
    # an outsider sees another project's members as a missing project
    missing = dave.get("/projects/no-such-project")
    outsider = dave.get("/projects/erins-secret")
    assert outsider.status_code == missing.status_code == 404 and "data-member" not in outsider.text
    assert outsider.text.replace("erins-secret", "?") == missing.text.replace("no-such-project", "?")
    assert _post(dave, "/projects/erins-secret/members", {"username": "dave", "role": "admin"}, page="/projects").status_code == 404
    # change a role, remove a member, unknown user and bad role said next to the field
    assert _post(carol, "/projects/carols/members", {"username": "erin", "role": "viewer"}, page="/projects/carols").status_code == 303
    assert _post(carol, "/projects/carols/members", {"username": "erin", "role": "remove"}, page="/projects/carols").status_code == 303
    assert 'data-member="erin"' not in carol.get("/projects/carols").text
    r = _post(carol, "/projects/carols/members", {"username": XSS, "role": "member"}, page="/projects/carols")
    assert r.status_code == 404 and 'class="field-error"' in r.text and XSS not in r.text
    r = _post(carol, "/projects/carols/members", {"username": "erin", "role": "owner"}, page="/projects/carols")
    assert r.status_code == 422 and 'class="field-error"' in r.text
    assert _post(carol, "/projects/carols/members", {"username": "e" * 100, "role": "member"}, page="/projects/carols").status_code == 422


def test_users_page_is_for_admins_only(server_only, people):
    dave = _login(server_only.url, "dave", "dave-password")
    assert dave.get("/users").status_code == 404
    assert 'href="/users"' not in dave.get("/settings").text
    assert _post(dave, "/users", {"username": "sneaky", "password": "sneaky-password"}).status_code == 404
    admin = _login(server_only.url, "admin", ADMIN_PASSWORD)
    page = admin.get("/users")
    assert page.status_code == 200 and 'data-user="dave"' in page.text and "sneaky" not in page.text
    r = _post(admin, "/users", {"username": "newbie", "password": "newbie-password", "is_admin": "on"}, page="/users")
    assert r.status_code == 303 and 'data-user="newbie"' in admin.get("/users").text
    assert web_login(server_only.url, "newbie", "newbie-password")[1].status_code == 303
    for data, field in [({"username": XSS, "password": "long-enough-pw"}, "username"),
                        ({"username": "shorty", "password": "short"}, "password"),
                        ({"username": "n" * 100, "password": "long-enough-pw"}, "username"),
                        ({"username": "newbie", "password": "long-enough-pw"}, "username")]:
        r = _post(admin, "/users", data, page="/users")
        assert r.status_code == 422, (data, r.status_code)
        assert f'id="e-{field}"' in r.text and XSS not in r.text and "long-enough-pw" not in r.text, data


def test_workers_page_shows_admins_the_machines_and_others_the_queues(server_only, people):
    s = server_only
    agent_token = s.api("POST", "/api/v1/tokens", json={"kind": "agent", "label": "test agent"})["token"]
    worker = s.api("POST", "/api/v1/workers/register", token=agent_token, json={
        "name": "gpu-box", "hostname": "gpu-box.lan", "queues": ["gpu", "default"], "cpus": 32, "memory_bytes": 64 << 30,
        "gpus": [{"name": "NVIDIA H100"}], "run_as": "root", "is_root": True})
    now = datetime.now(timezone.utc)
    for i, cpu in enumerate((10.0, 355.0)):  # the newer sample is the one shown
        s.api("POST", f"/api/v1/workers/{worker['worker_id']}/metrics", token=worker["token"], json={"samples": [
            {"ts": (now - timedelta(seconds=10 - i * 5)).isoformat(), "cpu": cpu, "mem_mb": 2048, "gpu_util": 40}]})
    s.api("POST", "/api/v1/queues", json={"name": "idle-queue"})
    admin = _login(s.url, "admin", ADMIN_PASSWORD)
    page = admin.get("/workers").text
    row = page[page.index(f'data-worker="{worker["worker_id"]}"'):]
    row = row[:row.index("</tr>")]
    for text in ("gpu-box", "online", "32", "64.0 GiB", "NVIDIA H100", "CPU 355 %", "mem 2048 MB", "GPU 40 %", "just now"):
        assert text in row, text
    assert "Last heartbeat" in page and re.search(r'data-queue="gpu"><td class="name">gpu</td><td>1<', page)
    assert "none: launches wait" in page  # idle-queue
    dave = _login(s.url, "dave", "dave-password")
    page = dave.get("/workers").text
    assert re.search(r'data-queue="gpu"><td class="name">gpu</td><td>1<', page)
    assert "gpu-box" not in page and "Last heartbeat" not in page


def test_no_page_answers_a_5xx_to_hostile_input(server_only, people):
    carol = _login(server_only.url, "carol", "carol-password")
    for path in ("/projects/%00", "/projects/" + "x" * 5000, "/projects/" + XSS, "/settings?saved=" + XSS):
        r = carol.get(path)
        assert r.status_code < 500 and XSS not in r.text, path
    for path, data in [("/settings/tokens", {"label": "x" * 100_000}), ("/settings/password", {"current_password": "\x00"}),
                       ("/projects/carols/members", {"username": "\u202e", "role": ""}), ("/settings/ssh-keys", {"key": "\n\n"})]:
        r = _post(carol, path, data)
        assert r.status_code < 500, (path, r.status_code)


def test_the_new_pages_carry_the_security_headers_and_no_inline_code(server_only, people):
    admin = _login(server_only.url, "admin", ADMIN_PASSWORD)
    for path in ("/settings", "/projects", "/projects/carols", "/users", "/workers"):
        r = admin.get(path)
        assert r.status_code == 200, path
        assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
        assert "<script>" not in r.text and " on" + "click=" not in r.text and "style=" not in r.text, path
        for nav in ('href="/projects"', 'href="/workers"', 'href="/users"', 'href="/settings"'):
            assert nav in r.text, (path, nav)
