"""The Remote Desktop app's launch (issue #9 point 1): its web form, grouped as the seed's configuration section,
validating like the API; the CLI's flags; export/import; and an app a worker cannot run failing clearly (the
desktop itself on the worker: test_remote_desktop_worker.py)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

FORM = "/apps/remote-desktop/launch"


@pytest.fixture(scope="module")
def admin(stack):
    client, answer = web_login(stack.url, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303
    yield client
    client.close()


def _count(stack) -> int:
    return stack.sql("SELECT count(*) FROM sessions")[0][0]


def _form_values(admin, **change) -> dict:
    data = {"csrf_token": page_csrf(admin.get(FORM).text), "type": "desktop", "queue": "default",
            "project": "Interactive Session", "max_idle_hours": "4", "workspace": "~/workspace", "idle_network_mb": "0.1",
            "idle_cpu": "10", "idle_gpu": "10"}
    data.update(change)
    return data


def test_the_form_shows_the_seed_groups_with_the_models_defaults(stack, admin):
    html = admin.get(FORM).text
    titles = re.findall(r"<legend>([^<]*)</legend>|<summary>([^<]*)</summary>", html)
    assert ["".join(t) for t in titles] == ["Application Session Name", "Type", "Application instance project", "Queue",
                                            "Idle Time Limit", "Environment Variables", "Advanced Options"]
    for name in ("name", "type", "project", "queue", "max_idle_hours", "env", "tags", "restore_session", "workspace",
                 "idle_network_mb", "idle_cpu", "idle_gpu"):
        assert f'name="{name}"' in html, name
    assert re.search(r'<select name="type" id="f-type">\s*<option value="desktop" selected>Remote Desktop</option>'
                     r'<option value="ssh">SSH</option>', html)
    assert '<textarea name="env" id="f-env"' in html and 'value="~/workspace"' in html
    assert "git_repo" not in html and "git_token" not in html and "dropbear" not in html  # the SSH app's options only
    assert "<script>" not in html and "style=" not in html
    assert 'href="/apps/remote-desktop/launch"' in admin.get("/apps/remote-desktop").text  # Launch New


def test_errors_show_next_to_their_fields_and_values_are_kept(stack, admin):
    before = _count(stack)
    r = admin.post(FORM, data=_form_values(admin, name="kept-rd", type="vnc", env="GOOD=1\nPATH=/evil",
                                             workspace="/etc", idle_gpu="150"))
    assert r.status_code == 422
    assert re.search(r'id="err-env"[^>]*>config.env: &#39;PATH&#39; is reserved', r.text), r.text
    assert re.search(r'id="err-type"[^>]*>config.type: ', r.text)
    for field in ("workspace", "idle_gpu"):
        assert re.search(rf'id="err-{field}"[^>]*>config.{field}', r.text), field
    assert 'value="kept-rd"' in r.text and "GOOD=1\nPATH=/evil</textarea>" in r.text
    assert '<option value="vnc" selected>vnc</option>' in r.text  # the bad choice stays visible next to its error
    r = admin.post(FORM, data=_form_values(admin, env="A=1\nTOKEN-SECRET-ONLY"))
    assert r.status_code == 422 and "entry 2 is not KEY=VALUE" in r.text and r.text.count("TOKEN-SECRET-ONLY") == 1  # in the textarea
    assert _count(stack) == before


def test_a_form_launch_stores_the_typed_config_and_export_import_round_trips(stack, admin):
    r = admin.post(FORM, data=_form_values(admin, name="rd-form", type="ssh", env="A=1\r\nB=x=y\r\n", tags="p, q",
                                             workspace="desk"))
    assert r.status_code == 303 and r.headers["location"].startswith("/sessions/")
    session_id = r.headers["location"].rsplit("/", 1)[1]
    doc = stack.api("GET", f"/api/v1/sessions/{session_id}/export")
    assert doc["app"] == "remote-desktop"
    config = doc["config"]
    assert config["type"] == "ssh" and config["env"] == {"A": "1", "B": "x=y"} and config["tags"] == ["p", "q"]
    assert config["workspace"] == "~/desk" and config["name"] == "rd-form"
    token = page_csrf(admin.get(FORM).text)
    r = admin.post(FORM + "/import", data={"csrf_token": token, "document": json.dumps(doc)})
    assert r.status_code == 200 and 'value="rd-form"' in r.text and "A=1\nB=x=y</textarea>" in r.text
    assert '<option value="ssh" selected>SSH</option>' in r.text
    exported = admin.post(FORM + "/export", data=_form_values(admin, name="rd-form", type="ssh", env="A=1\nB=x=y",
                                                              tags="p, q", workspace="desk"))
    assert exported.status_code == 200 and exported.json()["config"] == config
    wrong = admin.post("/apps/ssh-session/launch/import", data={"csrf_token": token, "document": json.dumps(doc)})
    assert wrong.status_code == 422 and "configures &#39;remote-desktop&#39;, not &#39;ssh-session&#39;" in wrong.text
    stack.api("POST", f"/api/v1/sessions/{session_id}/stop")


def test_cli_flags_and_config_files(stack, tmp_path):
    view = stack.cli_json("launch", "remote-desktop", "--name", "rd-cli", "--type", "ssh", "--env", "A=1", "--env", "B=x=y",
                          "--workspace", "w", "--tags", "t", "--max-idle-hours", "2")
    config = view["config"]
    assert view["app"] == "remote-desktop" and config["type"] == "ssh" and config["env"] == {"A": "1", "B": "x=y"}
    assert config["workspace"] == "~/w" and config["tags"] == ["t"] and config["max_idle_hours"] == 2
    path = tmp_path / "rd.json"
    stack.cli("sessions", "export", view["id"], "--output", str(path))
    assert json.loads(path.read_text()) == stack.api("GET", f"/api/v1/sessions/{view['id']}/export")
    again = stack.cli_json("launch", "remote-desktop", "--config", str(path), "--env", "B=2", "--env", "C=3", "--type", "desktop")
    assert again["config"] == {**config, "env": {"A": "1", "B": "2", "C": "3"}, "type": "desktop"}  # flags override the file
    for args, words in ((["--env", "NOEQUALS"], "--env: entry 1 is not KEY=VALUE"), (["--env", "HOME=/x"], "'HOME' is reserved"),
                        (["--type", "vnc"], "config.type"), (["--workspace", "/etc"], "config.workspace")):
        before = _count(stack)
        result = stack.cli("launch", "remote-desktop", *args, check=False)
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)
        assert _count(stack) == before
    for session_id in (view["id"], again["id"]):
        stack.cli("sessions", "stop", session_id, "--no-wait", check=False)


def test_an_app_the_worker_cannot_run_fails_clearly():
    from berth.agent.apps import get_agent_app
    from berth.errors import SetupFailed

    assert get_agent_app("remote-desktop").__name__ == "RemoteDesktopApp"
    with pytest.raises(SetupFailed) as failed:
        get_agent_app("jupyter")
    assert failed.value.message == "this worker cannot run 'jupyter' sessions (it runs: ssh-session, remote-desktop)"
