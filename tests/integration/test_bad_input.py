"""Bad input gets a clear error naming the problem, and nothing half-made is left behind."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest


def session_count(stack) -> int:
    return len(stack.api("GET", "/api/v1/sessions"))


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"berth_config": 1, "app": "ssh-session", "config": {"nmae": "typo"}}, "config.nmae: unknown field"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"max_idle_hours": "soon"}}, "config.max_idle_hours"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"dropbear": "maybe"}}, "config.dropbear"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"queue": "nowhere"}}, "config.queue: unknown queue 'nowhere'"),
        ({"berth_config": 1, "app": "ssh-session", "extra": 1, "config": {}}, "extra: unknown field"),
        ({"berth_config": 9, "app": "ssh-session", "config": {}}, "berth_config: unsupported schema version"),
        ({"berth_config": 1, "app": "teleporter", "config": {}}, "app: unknown or unsupported app"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"workspace": "/etc"}}, "config.workspace"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"workspace": "~/../other"}}, "config.workspace"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"idle_cpu": 150}}, "config.idle_cpu"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"git_repo": "https://u:secret-pw@example.com/r.git"}}, "config.git_repo"),
        ({"berth_config": 1, "app": "ssh-session", "config": {"restore_session": "000000000000"}}, "config.restore_session"),
    ],
)
def test_bad_config_file_is_rejected_naming_the_field(server_only, tmp_path, document, expected):
    before = session_count(server_only)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(document))
    result = server_only.cli("launch", "ssh-session", "--config", str(path), "--json", check=False)
    assert result.returncode == 1
    assert expected in result.stderr
    assert result.stdout == ""
    assert "secret-pw" not in result.stderr
    assert session_count(server_only) == before


@pytest.mark.parametrize("workspace", ["/", "/etc", "/root/.ssh", "~/../x", "a/../../b", "..", "~root/x", "ws\x00", "w\ns"])
def test_workspace_outside_the_home_is_refused_at_launch_import_and_clone(server_only, tmp_path, workspace):
    """A workspace is inside the session's home, always: the root agent restores and snapshots it."""
    user = "wsuser"
    if not any(u == user for (u,) in server_only.sql("SELECT username FROM users")):
        server_only.api("POST", "/api/v1/users", json={"username": user, "password": "wsuser-password"})
    token = httpx.post(server_only.url + "/api/v1/auth/login", json={"username": user, "password": "wsuser-password"}).json()["token"]
    before = session_count(server_only)
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.post(server_only.url + "/api/v1/sessions", headers=headers, json={"app": "ssh-session", "config": {"workspace": workspace}})
    assert r.status_code == 422 and r.json()["field"] == "config.workspace", r.text
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"workspace": workspace}}))
    env = server_only.env(BERTH_SERVER=server_only.url, BERTH_TOKEN=token, HOME=str(tmp_path))
    result = server_only.cli("launch", "ssh-session", "--config", str(path), env=env, check=False)
    assert result.returncode == 1 and "config.workspace" in result.stderr
    if "\x00" not in workspace:  # no command line can hold a NUL
        result = server_only.cli("launch", "ssh-session", "--workspace", workspace, env=env, check=False)
        assert result.returncode == 1 and "config.workspace" in result.stderr
    source = httpx.post(server_only.url + "/api/v1/sessions", headers=headers, json={"app": "ssh-session", "config": {}}).json()
    r = httpx.post(f"{server_only.url}/api/v1/sessions/{source['id']}/clone", headers=headers, json={"overrides": {"workspace": workspace}})
    assert r.status_code == 422 and r.json()["field"] == "config.workspace", r.text
    assert session_count(server_only) == before + 1  # only the clone's source


def test_relative_workspace_means_inside_the_home(server_only):
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"workspace": "projects/demo/"}})
    assert view["config"]["workspace"] == "~/projects/demo"


def test_malformed_json_file(server_only, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"berth_config": 1, "app": ')
    result = server_only.cli("launch", "ssh-session", "--config", str(path), check=False)
    assert result.returncode == 1 and "is not valid JSON" in result.stderr


def test_missing_config_file(server_only, tmp_path):
    result = server_only.cli("launch", "ssh-session", "--config", str(tmp_path / "none.json"), check=False)
    assert result.returncode == 1 and "no such file" in result.stderr


def test_unknown_queue_flag(server_only):
    result = server_only.cli("launch", "ssh-session", "--queue", "gpu-nowhere", check=False)
    assert result.returncode == 1
    assert "config.queue: unknown queue 'gpu-nowhere'" in result.stderr


def test_api_rejects_unknown_fields_with_422(server_only):
    r = httpx.post(server_only.url + "/api/v1/sessions", headers={"Authorization": f"Bearer {server_only.token}"},
                   json={"app": "ssh-session", "config": {"bogus": 1}})
    assert r.status_code == 422
    assert r.json()["field"] == "config.bogus"


def test_wrong_password_is_401_and_not_logged_in(server_only):
    r = httpx.post(server_only.url + "/api/v1/auth/login", json={"username": "admin", "password": "wrong-password"})
    assert r.status_code == 401
    result = server_only.cli("login", "--server", server_only.url, "--username", "admin", "--password", "wrong-password",
                             check=False, env=server_only.env(HOME=str(server_only.tmp / "other-home")))
    assert result.returncode == 1 and "wrong username or password" in result.stderr
    assert "wrong-password" not in (server_only.tmp / "server.log").read_text()


def test_every_api_route_requires_authentication(server_only):
    schema = httpx.get(server_only.url + "/openapi.json").json()
    open_routes = {("/api/v1/auth/login", "post")}
    for path, methods in schema["paths"].items():
        for method in methods:
            if (path, method) in open_routes or not path.startswith("/api/"):
                continue
            url = server_only.url + path.replace("{session_id}", "abc").replace("{worker_id}", "w").replace(
                "{token_id}", "t").replace("{name}", "p")
            r = httpx.request(method.upper(), url, json={})
            assert r.status_code == 401, f"{method.upper()} {path} answered {r.status_code} without a token"
            r = httpx.request(method.upper(), url, json={}, headers={"Authorization": "Bearer bu_forged"})
            assert r.status_code == 401, f"{method.upper()} {path} answered {r.status_code} with a forged token"


def test_openapi_documents_4xx_responses(server_only):
    schema = httpx.get(server_only.url + "/openapi.json").json()
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/v1/") or path == "/api/v1/auth/login":
            continue
        for method, op in methods.items():
            assert "401" in op["responses"], f"{method} {path} does not document 401"


def test_not_logged_in_cli_says_how(tmp_path):
    import os
    import sys
    from pathlib import Path

    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("BERTH_SERVER", None)
    env.pop("BERTH_TOKEN", None)
    berth = str(Path(sys.executable).with_name("berth"))
    result = subprocess.run([berth, "sessions", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "berth login" in result.stderr


def test_environment_credentials(server_only):
    env = server_only.env(BERTH_SERVER=server_only.url, BERTH_TOKEN=server_only.token, HOME=str(server_only.tmp / "envhome"))
    result = server_only.cli("sessions", "list", "--json", env=env)
    assert isinstance(json.loads(result.stdout), list)
