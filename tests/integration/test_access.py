"""Who may do what: project roles decide access to sessions; tokens are shown once and revocable."""

from __future__ import annotations

import json

import httpx
import pytest


def user_token(stack, username: str, password: str) -> str:
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    return r.json()["token"]


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "alice", "password": "alice-password"})
    s.api("POST", "/api/v1/users", json={"username": "bob", "password": "bob-password-1"})
    s.api("POST", "/api/v1/users", json={"username": "carol", "password": "carol-password"})
    alice = user_token(s, "alice", "alice-password")
    bob = user_token(s, "bob", "bob-password-1")
    carol = user_token(s, "carol", "carol-password")
    s.api("POST", "/api/v1/projects", token=bob, json={"name": "bobs-own"})  # an outsider with a project of his own
    # alice owns project "vision" (created by launching into it); carol may only read it.
    view = s.api("POST", "/api/v1/sessions", token=alice, json={"app": "ssh-session", "config": {"project": "vision"}})
    s.api("PUT", "/api/v1/projects/vision/members", token=alice, json={"username": "carol", "role": "viewer"})
    return {"alice": alice, "bob": bob, "carol": carol, "session": view["id"]}


# Every route that looks a session up by id; the body each sends.
SESSION_ROUTES = [("GET", "", None), ("POST", "/stop", None), ("GET", "/events", None), ("GET", "/export", None),
                  ("POST", "/clone", {}), ("POST", "/sync", None), ("GET", "/metrics", None),
                  ("POST", "/extend", {"hours": 1})]


def _as(stack, token: str, method: str, path: str, body=None) -> httpx.Response:
    return httpx.request(method, stack.url + path, json=body, headers={"Authorization": f"Bearer {token}"})


def assert_same_as_missing(stack, token: str, method: str, template: str, real_id: str, body=None) -> None:
    """The answer about `real_id` is exactly the answer about an id that does not exist (the id aside)."""
    missing_id = "0" * len(real_id)
    got = _as(stack, token, method, template.format(real_id), body)
    missing = _as(stack, token, method, template.format(missing_id), body)
    assert missing.status_code == 404, missing.text
    assert got.status_code == 404, (template, got.text)
    assert got.json() == {k: v.replace(missing_id, real_id) if isinstance(v, str) else v for k, v in missing.json().items()}


@pytest.mark.parametrize(("method", "suffix", "body"), SESSION_ROUTES)
def test_outsider_gets_the_same_404_as_for_a_missing_session(server_only, people, method, suffix, body):
    assert_same_as_missing(server_only, people["bob"], method, "/api/v1/sessions/{}" + suffix, people["session"], body)


@pytest.mark.parametrize(("method", "suffix", "body"), SESSION_ROUTES)
def test_viewer_gets_403_only_where_a_role_is_missing(server_only, people, method, suffix, body):
    r = _as(server_only, people["carol"], method, f"/api/v1/sessions/{people['session']}{suffix}", body)
    if suffix in ("/stop", "/sync", "/extend", "/clone"):  # clone launches into the project: member role
        assert r.status_code == 403 and "member role in project 'vision'" in r.json()["detail"], r.text
    else:
        assert r.status_code == 200, r.text


def test_outsider_gets_404_for_another_projects_members(server_only, people):
    assert_same_as_missing(server_only, people["bob"], "PUT", "/api/v1/projects/{}/members", "vision",
                           {"username": "bob", "role": "admin"})
    r = _as(server_only, people["carol"], "PUT", "/api/v1/projects/vision/members", {"username": "carol", "role": "admin"})
    assert r.status_code == 403 and "admin role in project 'vision'" in r.json()["detail"]


def test_another_users_token_is_answered_as_missing(server_only, people):
    alices = server_only.api("POST", "/api/v1/tokens", token=people["alice"], json={"label": "mine"})
    assert_same_as_missing(server_only, people["bob"], "DELETE", "/api/v1/tokens/{}", alices["id"])
    assert alices["id"] in [t["id"] for t in server_only.api("GET", "/api/v1/tokens", token=people["alice"]) if not t["revoked"]]


def test_other_project_user_cli_show_logs_stop_see_no_session(server_only, people, tmp_path):
    env = server_only.env(BERTH_SERVER=server_only.url, BERTH_TOKEN=people["bob"], HOME=str(tmp_path))
    for args in (("sessions", "show", people["session"]), ("sessions", "logs", people["session"]),
                 ("sessions", "stop", people["session"])):
        result = server_only.cli(*args, env=env, check=False)
        assert result.returncode == 1 and f"no session '{people['session']}'" in result.stderr
        assert "vision" not in result.stderr


def test_list_hides_other_projects(server_only, people):
    listed = server_only.api("GET", "/api/v1/sessions", token=people["bob"])
    assert people["session"] not in [s["id"] for s in listed]
    assert people["session"] in [s["id"] for s in server_only.api("GET", "/api/v1/sessions", token=people["carol"])]


def test_viewer_can_read_but_not_stop_or_launch(server_only, people):
    carol = people["carol"]
    assert server_only.api("GET", f"/api/v1/sessions/{people['session']}", token=carol)["project"] == "vision"
    r = httpx.post(f"{server_only.url}/api/v1/sessions/{people['session']}/stop", headers={"Authorization": f"Bearer {carol}"})
    assert r.status_code == 403
    r = httpx.post(f"{server_only.url}/api/v1/sessions", headers={"Authorization": f"Bearer {carol}"},
                   json={"app": "ssh-session", "config": {"project": "vision"}})
    assert r.status_code == 403


def test_launching_into_someone_elses_project_is_403(server_only, people):
    r = httpx.post(f"{server_only.url}/api/v1/sessions", headers={"Authorization": f"Bearer {people['bob']}"},
                   json={"app": "ssh-session", "config": {"project": "vision"}})
    assert r.status_code == 403


def test_non_admin_cannot_create_users_or_agent_tokens(server_only, people):
    h = {"Authorization": f"Bearer {people['bob']}"}
    assert httpx.post(server_only.url + "/api/v1/users", headers=h, json={"username": "eve", "password": "eve-password"}).status_code == 403
    assert httpx.post(server_only.url + "/api/v1/tokens", headers=h, json={"kind": "agent"}).status_code == 403


def test_users_cannot_use_worker_or_supervisor_routes(server_only, people):
    h = {"Authorization": f"Bearer {people['alice']}"}
    assert httpx.post(server_only.url + "/api/v1/workers/register", headers=h, json={
        "name": "x", "hostname": "x", "queues": ["q"], "cpus": 1, "memory_bytes": 1, "run_as": "x", "is_root": False}).status_code == 403
    r = httpx.post(f"{server_only.url}/api/v1/sessions/{people['session']}/supervisor/status", headers=h, json={"status": "active"})
    assert r.status_code == 403


def test_token_shown_once_hashed_and_revocable(server_only):
    created = server_only.cli_json("tokens", "create", "--label", "ci", "--expires-days", "7")
    secret = created["token"]
    assert secret.startswith("bu_")
    listed = server_only.cli_json("tokens", "list")
    assert created["id"] in [t["id"] for t in listed]
    assert secret not in str(listed)
    assert httpx.get(server_only.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    server_only.cli("tokens", "revoke", created["id"])
    assert httpx.get(server_only.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    db = (server_only.tmp / "data" / "berth.db")
    if db.exists():  # SQLite run: the secret itself is nowhere in the database file
        assert secret.encode() not in db.read_bytes()


def test_launch_credentials_are_sealed_in_the_database(server_only, tmp_path):
    token_file = tmp_path / "git-token"
    token_file.write_text("ghp_berthTestSecretToken123\n")
    view = server_only.cli_json("launch", "ssh-session", "--git-repo", "https://example.com/private.git",
                                "--git-token-file", str(token_file))
    (stored,), = server_only.sql(f"SELECT secrets FROM sessions WHERE id = '{view['id']}'")
    stored = stored if isinstance(stored, str) else json.dumps(stored)
    assert "ghp_berthTestSecretToken123" not in stored
    assert "sealed:v1:" in stored
    server_only.cli("sessions", "stop", view["id"])
