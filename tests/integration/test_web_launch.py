"""The launch form at the HTTP level, against a real server (SQLite and PostgreSQL): the CSRF check on every
POST, the API's validation next to each field, secrets never sent back, clone's 404 for an outsider, exports,
and the console's word when no online worker serves the queue."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

FORM = "/apps/ssh-session/launch"


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    for name in ("vera", "olga"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    s.api("POST", "/api/v1/projects", json={"name": "team"})
    s.api("PUT", "/api/v1/projects/team/members", json={"username": "vera", "role": "viewer"})
    source = s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {
        "project": "team", "name": "source", "tags": ["a", "b"], "packages": ["numpy", "pandas>=2"]}})
    return {"source": source["id"]}


@pytest.fixture(scope="module")
def admin(server_only):
    client, answer = web_login(server_only.url, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303
    yield client
    client.close()


def _count(stack) -> int:
    return stack.sql("SELECT count(*) FROM sessions")[0][0]


def _form_values(admin, **change) -> dict:
    html = admin.get(FORM).text
    data = {"csrf_token": page_csrf(html), "queue": "default", "project": "Interactive Session", "workspace": "~/workspace",
            "max_idle_hours": "4", "idle_network_mb": "0.1", "idle_cpu": "10", "idle_gpu": "10"}
    data.update(change)
    return data


def test_the_form_shows_every_option_with_the_models_defaults(server_only, admin):
    html = admin.get(FORM).text
    for name in ("git_repo", "git_branch", "git_commit", "image", "container_args", "init_script", "packages", "workspace",
                 "queue", "max_idle_hours", "name", "project", "tags", "restore_session", "dropbear", "idle_network_mb",
                 "idle_cpu", "idle_gpu", "git_token", "git_ssh_key"):
        assert f'name="{name}"' in html, name
    assert 'value="~/workspace"' in html and 'value="Interactive Session"' in html and 'value="4"' in html
    assert "<details" in html and "Advanced Options" in html and "online worker" in html
    assert "<script>" not in html and "style=" not in html
    assert 'href="/apps/ssh-session/launch"' in admin.get("/apps/ssh-session").text  # Launch New


def test_every_launch_post_needs_the_csrf_token(server_only, admin, people):
    before = _count(server_only)
    for path in (FORM, FORM + "/import", FORM + "/export"):
        for data in ({}, {"csrf_token": "0" * 43}):
            r = admin.post(path, data={**data, "name": "no-csrf", "document": "{}"})
            assert r.status_code == 403, (path, r.status_code)
        assert admin.post(path, data={"name": "x"}, headers={"sec-fetch-site": "cross-site",
                                                              "X-CSRF-Token": page_csrf(admin.get(FORM).text)}).status_code == 403
    assert _count(server_only) == before


def test_errors_show_next_to_their_fields_values_kept_secrets_never_echoed(server_only, admin, people):
    before = _count(server_only)
    data = _form_values(admin, name="kept-name", idle_cpu="150", git_branch="-evil", git_token="tok-SECRET-123",
                        git_ssh_key="KEY-SECRET-456", max_idle_hours="soon")
    r = admin.post(FORM, data=data)
    assert r.status_code == 422
    for field in ("idle_cpu", "git_branch", "max_idle_hours"):
        assert re.search(rf'id="err-{field}"[^>]*>[^<]*{field}', r.text), field
    assert 'value="kept-name"' in r.text and 'value="150"' in r.text
    assert "tok-SECRET-123" not in r.text and "KEY-SECRET-456" not in r.text
    r = admin.post(FORM, data=_form_values(admin, queue="nowhere"))  # the service's check, at its field
    assert r.status_code == 422 and re.search(r'id="err-queue"[^>]*>config.queue: unknown queue', r.text)
    assert _count(server_only) == before


def test_a_launch_redirects_to_the_instance_page_with_the_config_typed(server_only, admin, people):
    data = _form_values(admin, name="from-form", tags="x, y", packages="numpy\n'pandas>=2'", dropbear="on",
                        git_token="tok-SECRET-789")
    r = admin.post(FORM, data=data)
    assert r.status_code == 303 and r.headers["location"].startswith("/sessions/")
    session_id = r.headers["location"].rsplit("/", 1)[1]
    config = server_only.api("GET", f"/api/v1/sessions/{session_id}/export")["config"]
    assert config["name"] == "from-form" and config["tags"] == ["x", "y"] and config["packages"] == ["numpy", "pandas>=2"]
    assert config["dropbear"] is True and config["project"] == "Interactive Session"
    assert "tok-SECRET-789" not in admin.get(f"/sessions/{session_id}").text
    server_only.api("POST", f"/api/v1/sessions/{session_id}/stop")


def test_a_viewer_cannot_launch_into_the_project(server_only, people):
    client, _ = web_login(server_only.url, "vera", "vera-password")
    before = _count(server_only)
    r = client.post(FORM, data=_form_values(client, project="team", name="viewer-try"))
    assert r.status_code == 403 and re.search(r'id="err-project"[^>]*>you need the member role', r.text)
    assert 'value="viewer-try"' in r.text and _count(server_only) == before
    assert '<option value="team">' not in client.get(FORM).text  # not offered either


def test_clone_is_prefilled_for_readers_and_the_same_404_for_outsiders(server_only, admin, people):
    html = admin.get(FORM, params={"clone": people["source"]}).text
    assert f'name="restore_session" id="f-restore_session" value="{people["source"]}"' in html
    assert 'value="source"' in html and 'value="a, b"' in html and "pandas&gt;=2" in html
    outsider, _ = web_login(server_only.url, "olga", "olga-password")
    hidden = outsider.get(FORM, params={"clone": people["source"]})
    missing = outsider.get(FORM, params={"clone": "000000000000"})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace(people["source"], "000000000000") == missing.text
    assert outsider.get(f"/sessions/{people['source']}/export").status_code == 404


def test_import_accepts_exported_and_bare_documents_and_launches_nothing(server_only, admin, people):
    before = _count(server_only)
    token = page_csrf(admin.get(FORM).text)
    exported = admin.get(f"/sessions/{people['source']}/export")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    assert exported.json() == server_only.api("GET", f"/api/v1/sessions/{people['source']}/export")
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": exported.text})
    assert r.status_code == 200 and 'value="source"' in r.text and "Configuration imported" in r.text
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": json.dumps({"queue": "default", "name": "bare"})})
    assert r.status_code == 200 and 'value="bare"' in r.text
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": json.dumps({"idle_cpu": 150, "nmae": "x"})})
    assert r.status_code == 422 and re.search(r'id="err-idle_cpu"', r.text) and "nmae: unknown field" in r.text
    assert 'value="150"' in r.text
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": '{"berth_config": 1, "app": '})
    assert r.status_code == 422 and "not valid JSON" in r.text
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": "[1, 2]"})
    assert r.status_code == 422 and "expected an exported configuration" in r.text
    assert _count(server_only) == before


def test_export_of_the_form_is_the_exported_document(server_only, admin):
    r = admin.post(FORM + "/export", data=_form_values(admin, name="exported", tags="t1", git_token="tok-SECRET-000"))
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    doc = r.json()
    assert doc["berth_config"] == 1 and doc["app"] == "ssh-session" and doc["config"]["name"] == "exported"
    assert doc["config"]["tags"] == ["t1"] and "tok-SECRET-000" not in r.text


def test_a_queue_no_online_worker_serves_is_said_at_once(server_only, admin):
    server_only.api("POST", "/api/v1/queues", json={"name": "lonely"})
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "lonely"}})
    events = server_only.api("GET", f"/api/v1/sessions/{view['id']}/events")
    assert [(e["level"], e["message"]) for e in events][-1] == (
        "warning", "no online worker serves queue 'lonely': the session waits there until one does")
    assert view["status"] == "queued"
    server_only.api("POST", f"/api/v1/sessions/{view['id']}/stop")
    html = admin.get(FORM).text
    assert re.search(r'<option value="lonely" data-workers="0"', html)
    r = admin.post(FORM, data=_form_values(admin, queue="lonely"))  # allowed, with the warning on the form page first
    assert r.status_code == 303
    server_only.api("POST", f"/api/v1/sessions/{r.headers['location'].rsplit('/', 1)[1]}/stop")
