"""Secrets at launch: credentials in a git URL are refused (never stored, shown or exported), the sealed git
credential is deleted once the agent has it, and a session's token dies with the session."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

SECRET = "ghpSECRET0123456789token"


def login(stack, username: str, password: str) -> str:
    return httpx.post(stack.url + "/api/v1/auth/login", json={"username": username, "password": password}).json()["token"]


@pytest.fixture(scope="module")
def gina(server_only):
    """A user without admin rights, with a project of their own and a viewer in it."""
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "gina", "password": "gina-password"})
    s.api("POST", "/api/v1/users", json={"username": "vic", "password": "vic-password"})
    token = login(s, "gina", "gina-password")
    s.api("POST", "/api/v1/projects", token=token, json={"name": "gina-lab"})
    s.api("PUT", "/api/v1/projects/gina-lab/members", token=token, json={"username": "vic", "role": "viewer"})
    return token


@pytest.fixture(scope="module")
def worker(server_only):
    reg = server_only.api("POST", "/api/v1/workers/register", token=server_only.agent_token, json={
        "name": "secrets-worker", "hostname": "h", "queues": ["secret-q"], "cpus": 1, "memory_bytes": 1 << 30,
        "run_as": "root", "is_root": True})
    return reg


def post(stack, path: str, token: str, **kw) -> httpx.Response:
    return httpx.post(stack.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)


def stored_anywhere(stack, needle: str) -> bool:
    """The raw rows (configs, sealed secrets, console, names) and the server log."""
    for table, column in (("sessions", "config"), ("sessions", "secrets"), ("sessions", "name"), ("sessions", "error"),
                          ("session_events", "message")):
        for (value,) in stack.sql(f"SELECT {column} FROM {table}"):
            if value is not None and needle in (value if isinstance(value, str) else json.dumps(value)):
                return True
    return needle in (stack.tmp / "server.log").read_text(errors="replace")


CREDENTIAL_URLS = [
    f"https://{SECRET}@github.com/org/private.git",
    f"https://oauth2:{SECRET}@gitlab.example.com/org/private.git",
    f"http://x-token:{SECRET}@git.example.com/r",
    f"ssh://git:{SECRET}@git.example.com/org/r.git",
    f"git:{SECRET}@git.example.com:org/r.git",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_credentials_in_git_url_are_refused_and_never_stored(server_only, gina, url):
    before = server_only.sql("SELECT COUNT(*) FROM sessions")[0][0]
    r = post(server_only, "/api/v1/sessions", gina, json={"app": "ssh-session", "config": {"git_repo": url, "project": "gina-lab"}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "config.git_repo"
    assert "--git-token-file" in r.json()["detail"] and "--git-ssh-key" in r.json()["detail"]
    assert SECRET not in r.text
    assert server_only.sql("SELECT COUNT(*) FROM sessions")[0][0] == before
    assert not stored_anywhere(server_only, SECRET)


@pytest.mark.parametrize("url", ["git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git",
                                 "https://github.com/org/repo.git", "git+ssh://git@host/org/r.git"])
def test_ssh_user_names_and_plain_urls_are_not_credentials(server_only, gina, url):
    r = post(server_only, "/api/v1/sessions", gina, json={"app": "ssh-session", "config": {"git_repo": url, "project": "gina-lab", "queue": "parked"}})
    if r.status_code == 422 and r.json()["field"] == "config.queue":  # the parking queue, made once
        server_only.api("POST", "/api/v1/queues", json={"name": "parked"})
        r = post(server_only, "/api/v1/sessions", gina, json={"app": "ssh-session", "config": {"git_repo": url, "project": "gina-lab", "queue": "parked"}})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["git_repo"] == url


def test_cli_launch_with_a_token_url_is_refused_without_echoing_it(server_only, gina, tmp_path):
    env = server_only.env(BERTH_SERVER=server_only.url, BERTH_TOKEN=gina, HOME=str(tmp_path))
    result = server_only.cli("launch", "ssh-session", "--project", "gina-lab", "--git-repo", CREDENTIAL_URLS[0], env=env, check=False)
    assert result.returncode == 1
    assert "git_repo" in result.stderr and "--git-token-file" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not stored_anywhere(server_only, SECRET)


def test_import_and_clone_refuse_token_urls(server_only, gina, tmp_path):
    env = server_only.env(BERTH_SERVER=server_only.url, BERTH_TOKEN=gina, HOME=str(tmp_path))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"git_repo": CREDENTIAL_URLS[1]}}))
    result = server_only.cli("launch", "ssh-session", "--config", str(path), env=env, check=False)
    assert result.returncode == 1 and "config.git_repo" in result.stderr and SECRET not in result.stderr
    r = post(server_only, "/api/v1/configs/validate", gina, json={"berth_config": 1, "app": "ssh-session", "config": {"git_repo": CREDENTIAL_URLS[0]}})
    assert r.status_code == 422 and r.json()["field"] == "config.git_repo" and SECRET not in r.text
    source = server_only.api("POST", "/api/v1/sessions", token=gina, json={"app": "ssh-session", "config": {"project": "gina-lab"}})
    r = post(server_only, f"/api/v1/sessions/{source['id']}/clone", gina, json={"overrides": {"git_repo": CREDENTIAL_URLS[0]}})
    assert r.status_code == 422 and r.json()["field"] == "config.git_repo" and SECRET not in r.text
    assert not stored_anywhere(server_only, SECRET)


def raw_secrets(stack, session_id: str) -> dict:
    (value,) = stack.sql(f"SELECT secrets FROM sessions WHERE id = '{session_id}'")[0]
    return json.loads(value) if isinstance(value, str) else value


def claim_own(stack, worker, session_id: str) -> dict:
    while True:
        assignment = stack.api("POST", f"/api/v1/workers/{worker['worker_id']}/claim", token=worker["token"])
        assert assignment is not None, "the session was not claimable"
        if assignment["session_id"] == session_id:
            return assignment


def test_sealed_git_credential_is_deleted_once_the_agent_has_it(server_only, gina, worker):
    view = server_only.api("POST", "/api/v1/sessions", token=gina, json={
        "app": "ssh-session", "config": {"project": "gina-lab", "queue": "secret-q", "git_repo": "https://git.example.com/private.git"},
        "secrets": {"git_token": SECRET}})
    sealed = raw_secrets(server_only, view["id"])
    assert sealed["git_token"].startswith("sealed:v1:") and SECRET not in json.dumps(sealed)
    assignment = claim_own(server_only, worker, view["id"])
    assert assignment["secrets"]["git_token"] == SECRET  # the agent got it, once
    assert raw_secrets(server_only, view["id"]) == {}
    # a viewer of the project sees the URL, never the credential
    vic = login(server_only, "vic", "vic-password")
    for suffix in ("", "/export"):
        assert SECRET not in httpx.get(f"{server_only.url}/api/v1/sessions/{view['id']}{suffix}",
                                       headers={"Authorization": f"Bearer {vic}"}).text


def test_a_session_token_dies_with_the_session(server_only, gina, worker):
    view = server_only.api("POST", "/api/v1/sessions", token=gina, json={"app": "ssh-session", "config": {"project": "gina-lab", "queue": "secret-q"}})
    assignment = claim_own(server_only, worker, view["id"])
    sid, token = view["id"], assignment["session_token"]
    now = datetime.now(timezone.utc).isoformat()
    sample = {"samples": [{"ts": now, "cpu": 1.0}]}
    # while it runs, its supervisor reports, writes the console and posts metrics
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/status", token, json={"status": "active"}).status_code == 200
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/events", token, json=[{"message": "hello"}]).status_code == 204
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/metrics", token, json=sample).status_code == 200
    server_only.api("POST", f"/api/v1/sessions/{sid}/stop", token=gina)
    # the supervisor's final steps: stopping, last console lines, final report
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/status", token, json={"status": "stopping"}).status_code == 200
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/events", token, json=[{"message": "teardown"}]).status_code == 204
    assert post(server_only, f"/api/v1/sessions/{sid}/supervisor/status", token, json={"status": "stopped"}).status_code == 200
    events_before = server_only.sql(f"SELECT COUNT(*) FROM session_events WHERE session_id = '{sid}'")[0][0]
    # after it: the token is dead everywhere
    for path, body in ((f"/api/v1/sessions/{sid}/supervisor/events", [{"message": "ghost line"}]),
                       (f"/api/v1/sessions/{sid}/supervisor/metrics", sample),
                       (f"/api/v1/sessions/{sid}/supervisor/status", {"status": "active"}),
                       (f"/api/v1/sessions/{sid}/supervisor/watch", None),
                       (f"/api/v1/workspaces/sessions/{sid}/missing", {"ids": ["0" * 64]})):
        r = post(server_only, path, token, json=body)
        assert r.status_code == 401, f"{path}: {r.status_code} {r.text}"
    r = httpx.get(f"{server_only.url}/api/v1/workspaces/sessions/{sid}/state", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert server_only.sql(f"SELECT COUNT(*) FROM session_events WHERE session_id = '{sid}'")[0][0] == events_before
    assert "ghost line" not in server_only.events(sid)


def test_supervisor_final_steps_still_reach_the_console(stack):
    """A real supervisor: its last console lines (teardown) land before its final report kills its token."""
    view = stack.cli_json("launch", "ssh-session", "--wait", "--quiet")
    stack.api("POST", f"/api/v1/sessions/{view['id']}/stop")
    stack.wait_status(view["id"], "stopped")
    events = stack.events(view["id"])
    teardown = [i for i, e in enumerate(events) if e.startswith("teardown: session processes ended")]
    assert teardown and teardown[-1] < events.index("status: stopped"), events
    assert stack.wait_status(view["id"], "stopped")["error"] is None
