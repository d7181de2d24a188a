"""Input limits: bad numbers, oversized bodies, control characters and names routes cannot address all get a clear
4xx naming the field, never a 500, and nothing is created."""

from __future__ import annotations

import json

import httpx
import pytest


def post_raw(stack, path: str, text: str, token: str | None = None, **kw) -> httpx.Response:
    """Send JSON text as is: NaN and Infinity tokens are what a hostile client sends, not what json.dumps allows."""
    return httpx.post(stack.url + path, content=text.encode(), timeout=60,
                      headers={"Authorization": f"Bearer {token or stack.token}", "Content-Type": "application/json"}, **kw)


@pytest.fixture(scope="module")
def mallory(server_only):
    """A user without admin rights, with a project of their own."""
    server_only.api("POST", "/api/v1/users", json={"username": "mallory", "password": "mallory-password"})
    r = httpx.post(server_only.url + "/api/v1/auth/login", json={"username": "mallory", "password": "mallory-password"})
    token = r.json()["token"]
    server_only.api("POST", "/api/v1/projects", token=token, json={"name": "mallory-lab"})
    return token


def count(stack, table: str) -> int:
    return stack.sql(f"SELECT COUNT(*) FROM {table}")[0][0]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e308", "1e400"])
def test_token_lifetime_must_be_a_finite_sane_number(server_only, mallory, value):
    before = count(server_only, "api_tokens")
    r = post_raw(server_only, "/api/v1/tokens", f'{{"label": "x", "expires_days": {value}}}', token=mallory)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "expires_days"
    assert count(server_only, "api_tokens") == before


@pytest.mark.parametrize(("field", "value"), [("idle_network_mb", "Infinity"), ("idle_network_mb", "NaN"),
                                              ("max_idle_hours", "NaN"), ("idle_cpu", "-Infinity"),
                                              ("sync_minutes", "NaN"), ("workspace_max_gb", "Infinity"),
                                              ("idle_network_mb", "1e308")])
def test_session_config_numbers_must_be_finite(server_only, mallory, field, value):
    before = count(server_only, "sessions")
    r = post_raw(server_only, "/api/v1/sessions", f'{{"app": "ssh-session", "config": {{"{field}": {value}}}}}', token=mallory)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == f"config.{field}"
    assert count(server_only, "sessions") == before


@pytest.mark.parametrize("value", ["1e308", "inf", "nan", "-1"])
def test_gc_grace_must_be_a_sane_number(server_only, value):
    r = httpx.post(server_only.url + "/api/v1/workspaces/gc", params={"grace_s": value},
                   headers={"Authorization": f"Bearer {server_only.token}"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "grace_s"


@pytest.mark.parametrize(("path", "params"), [("/api/v1/sessions/x/events", {"after": str(10 ** 30)}),
                                              ("/api/v1/sessions/x/events", {"after": str(2 ** 31)}),
                                              ("/api/v1/sessions/x/events", {"wait": "nan"}),
                                              ("/api/v1/sessions", {"limit": str(10 ** 30)}),
                                              ("/api/v1/workers/x/metrics", {"points": str(10 ** 30)})])
def test_query_numbers_out_of_range_are_422(server_only, mallory, path, params):
    r = httpx.get(server_only.url + path, params=params, headers={"Authorization": f"Bearer {mallory}"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == next(iter(params))


def test_body_over_the_limit_is_413_and_creates_nothing(server_only, mallory):
    before = count(server_only, "sessions")
    script = "#" * (14 << 20)
    body = json.dumps({"app": "ssh-session", "config": {"init_script": script}})
    r = post_raw(server_only, "/api/v1/sessions", body, token=mallory)
    assert r.status_code == 413, r.text[:300]
    assert "BERTH_MAX_BODY_BYTES" in r.json()["detail"]
    assert count(server_only, "sessions") == before


def test_streamed_body_over_the_limit_is_413(server_only, mallory):
    """No Content-Length (chunked): the limit counts the bytes as they arrive."""
    def chunks():
        yield b'{"app": "ssh-session", "config": {"init_script": "'
        for _ in range(40):
            yield b"#" * (64 << 10)
        yield b'"}}'

    r = httpx.post(server_only.url + "/api/v1/sessions", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {mallory}", "Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:300]


def test_body_under_the_limit_still_works(server_only, mallory):
    r = post_raw(server_only, "/api/v1/configs/validate",
                 json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"init_script": "#" * (200 << 10)}}), token=mallory)
    assert r.status_code == 200, r.text[:300]


def test_workspace_uploads_have_their_own_larger_limit(server_only, mallory):
    """A 3 MiB pack is over the ordinary limit but not the upload limit: it reaches the route (which refuses
    this caller), not the 413."""
    r = httpx.put(server_only.url + "/api/v1/workspaces/sessions/abc/packs/" + "0" * 64, content=b"\0" * (3 << 20),
                  headers={"Authorization": f"Bearer {mallory}", "Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code in (403, 404), r.text[:300]


@pytest.mark.parametrize(("config", "field"), [
    ({"name": "evil\x00name"}, "config.name"),
    ({"name": "line\nbreak"}, "config.name"),
    ({"tags": ["ok", "t\x00g"]}, "config.tags.1"),
    ({"tags": "a,\x1b[31mred"}, "config.tags.1"),
    ({"project": "a/b"}, "config.project"),
    ({"project": "p\x00"}, "config.project"),
    ({"project": ".."}, "config.project"),
    ({"project": "what?"}, "config.project"),
    ({"project": "50%"}, "config.project"),
    ({"project": "a#b"}, "config.project"),
    ({"project": "back\\slash"}, "config.project"),
    ({"queue": "q\x00"}, "config.queue"),
])
def test_names_and_tags_refuse_control_and_unaddressable_characters(server_only, mallory, config, field):
    before = count(server_only, "sessions"), count(server_only, "projects")
    r = httpx.post(server_only.url + "/api/v1/sessions", json={"app": "ssh-session", "config": config},
                   headers={"Authorization": f"Bearer {mallory}"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert (count(server_only, "sessions"), count(server_only, "projects")) == before


@pytest.mark.parametrize("name", ["a/b", "a?b", "a#b", "a%2Fb", "a\\b", " lead", "trail ", ".", "..", "nul\x00", "tab\tname", "", "x" * 200])
def test_project_names_routes_cannot_address_are_refused(server_only, mallory, name):
    before = count(server_only, "projects")
    r = httpx.post(server_only.url + "/api/v1/projects", json={"name": name}, headers={"Authorization": f"Bearer {mallory}"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "name"
    assert count(server_only, "projects") == before


def test_a_created_project_is_reachable_by_its_own_routes(server_only, mallory):
    name = "Team Ünïcode (2024) v1.5"
    assert server_only.api("POST", "/api/v1/projects", token=mallory, json={"name": name})["name"] == name
    r = httpx.put(f"{server_only.url}/api/v1/projects/{name}/members", json={"username": "admin", "role": "viewer"},
                  headers={"Authorization": f"Bearer {mallory}"})
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("username", ["evil\x00", "new\nline", "x" * 100])
def test_usernames_refuse_control_characters(server_only, username):
    r = httpx.post(server_only.url + "/api/v1/users", json={"username": username, "password": "long-enough-pw"},
                   headers={"Authorization": f"Bearer {server_only.token}"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "username"


@pytest.mark.parametrize("name", ["q/1", "q\x00", " q"])
def test_queue_names_are_names(server_only, name):
    r = httpx.post(server_only.url + "/api/v1/queues", json={"name": name}, headers={"Authorization": f"Bearer {server_only.token}"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "name"


@pytest.mark.parametrize("path", ["/api/v1/sessions/ab%00cd", "/api/v1/sessions/ab%0Acd/events", "/api/v1/projects/p%00/members"])
def test_control_characters_in_the_url_are_4xx(server_only, mallory, path):
    r = httpx.request("PUT" if path.endswith("members") else "GET", server_only.url + path,
                      json={"username": "admin", "role": "viewer"}, headers={"Authorization": f"Bearer {mallory}"})
    assert 400 <= r.status_code < 500, r.text
