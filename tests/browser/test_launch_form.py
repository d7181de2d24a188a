"""The launch form in a real browser against a real agent: launch with a git repo, packages and a workspace
path; errors next to their fields with nothing launched; Import (exported, bare, broken), Clone, a viewer's
refusal, and a session name of HTML that stays text."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ADMIN_PASSWORD, git_daemon
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> str:
    """A one-commit repository served by git daemon (the session's own user clones it)."""
    root = tmp_path_factory.mktemp("git")
    src = root / "src"
    src.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=src, check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    (src / "hello.txt").write_text("hello\n")
    git("add", ".")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "one")
    with git_daemon(src, root) as url:
        yield url


def _count(stack) -> int:
    return stack.sql("SELECT count(*) FROM sessions")[0][0]


def test_launch_through_the_form_reaches_the_instance_page(browse, stack, repo):
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session")
    w.page.click("text=Launch New")
    expect(w.page.locator("h1")).to_have_text("Launch SSH Session")
    expect(w.page.locator("#f-workspace")).to_have_value("~/workspace")  # the model's defaults
    expect(w.page.locator("#f-max_idle_hours")).to_have_value("4")
    expect(w.page.locator("#queue-warning")).to_be_hidden()  # the agent serves 'default'
    w.page.fill("#f-git_repo", repo)
    w.page.fill("#f-packages", "six==1.16.0")
    w.page.fill("#f-workspace", "~/proj")
    w.page.fill("#f-name", "form-launched")
    w.page.click("details.advanced summary")
    w.page.evaluate("window.scrollTo(0, 0)")
    w.shoot("launch-form")
    w.page.click("button:text-is('Launch')")
    expect(w.page.locator("h1")).to_have_text("form-launched")
    session_id = w.page.url.rsplit("/", 1)[1]
    config = stack.api("GET", f"/api/v1/sessions/{session_id}/export")["config"]
    assert config["git_repo"] == repo and config["packages"] == ["six==1.16.0"] and config["workspace"] == "~/proj"
    expect(w.page.locator(".status-banner .status-label")).to_have_text("active", timeout=120_000)
    events = " ".join(stack.events(session_id))
    assert "git" in events.lower() and "six" in events
    stack.api("POST", f"/api/v1/sessions/{session_id}/stop")
    assert w.dialogs == []


def test_a_field_error_shows_next_to_it_and_nothing_launches(browse, stack):
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session/launch")
    before = _count(stack)
    w.page.fill("#f-name", XSS)
    w.page.fill("#f-git_token", "tok-SECRET-web")
    w.page.click("details.advanced summary")
    w.page.fill("#f-idle_cpu", "150")
    w.page.click("button:text-is('Launch')")
    expect(w.page.locator("[data-field=idle_cpu] .field-error")).to_contain_text("idle_cpu")
    expect(w.page.locator("details.advanced")).to_have_attribute("open", "")  # opened to show its error
    expect(w.page.locator("#f-name")).to_have_value(XSS)  # the HTML name round-trips as text
    expect(w.page.locator("#f-git_token")).to_have_value("")
    assert "tok-SECRET-web" not in w.page.content() and _count(stack) == before
    w.page.fill("#f-idle_cpu", "5")
    w.page.click("button:text-is('Launch')")
    expect(w.page.locator("h1")).to_have_text(XSS)
    stack.api("POST", f"/api/v1/sessions/{w.page.url.rsplit('/', 1)[1]}/stop")
    assert w.dialogs == []


def test_import_prefills_and_launches_nothing(browse, stack, tmp_path):
    source = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {
        "name": "to-export", "tags": ["t1"], "queue": "default", "max_idle_hours": 2}})
    stack.api("POST", f"/api/v1/sessions/{source['id']}/stop")
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session/launch")
    before = _count(stack)
    with w.page.expect_download() as download:  # Export Configuration of a session (the dashboard links it)
        w.page.evaluate(f"location.href = '/sessions/{source['id']}/export'")
    exported = tmp_path / "exported.json"
    download.value.save_as(exported)
    assert json.loads(exported.read_text()) == stack.api("GET", f"/api/v1/sessions/{source['id']}/export")

    w.page.set_input_files("[data-import-file]", str(exported))
    expect(w.page.locator(".alert.notice")).to_contain_text("Configuration imported")
    expect(w.page.locator("#f-name")).to_have_value("to-export")
    expect(w.page.locator("#f-max_idle_hours")).to_have_value("2")
    expect(w.page.locator("#f-tags")).to_have_value("t1")

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"queue": "default", "name": "hand-written"}))
    w.page.set_input_files("[data-import-file]", str(bare))
    expect(w.page.locator("#f-name")).to_have_value("hand-written")

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"idle_gpu": -1, "name": "broken"}))
    w.page.set_input_files("[data-import-file]", str(broken))
    expect(w.page.locator("[data-field=idle_gpu] .field-error")).to_contain_text("idle_gpu")
    expect(w.page.locator("#f-name")).to_have_value("broken")
    not_json = tmp_path / "not.json"
    not_json.write_text('{"berth_config": 1,')
    w.page.set_input_files("[data-import-file]", str(not_json))
    expect(w.page.locator(".alert.error")).to_contain_text("not valid JSON")
    assert _count(stack) == before

    with w.page.expect_download() as download:  # Export Configuration of the form as it stands
        w.page.fill("#f-name", "from-the-form")
        w.page.click("button:text-is('Export Configuration')")
    doc = json.loads(open(download.value.path()).read())
    assert doc["berth_config"] == 1 and doc["config"]["name"] == "from-the-form"
    assert _count(stack) == before
    assert w.dialogs == []


def test_clone_is_prefilled_with_the_restore_id(browse, stack):
    source = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "clone-me", "packages": ["six"]}})
    stack.api("POST", f"/api/v1/sessions/{source['id']}/stop")
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, f"/login?next=/apps/ssh-session/launch%3Fclone%3D{source['id']}")
    expect(w.page.locator("#f-restore_session")).to_have_value(source["id"])
    expect(w.page.locator("#f-name")).to_have_value("clone-me")
    expect(w.page.locator("#f-packages")).to_have_value("six")
    assert w.dialogs == []


def test_a_viewer_gets_no_launch_into_the_project(browse, stack):
    stack.api("POST", "/api/v1/users", json={"username": "viv", "password": "viv-password"})
    stack.api("POST", "/api/v1/projects", json={"name": "watched"})
    stack.api("PUT", "/api/v1/projects/watched/members", json={"username": "viv", "role": "viewer"})
    before = _count(stack)
    w = browse(stack.url)
    w.log_in("viv", "viv-password", "/login?next=/apps/ssh-session/launch")
    w.page.click("details.advanced summary")
    w.page.fill("#f-project", "watched")
    w.page.click("button:text-is('Launch')")
    expect(w.page.locator("[data-field=project] .field-error")).to_contain_text("member role")
    assert _count(stack) == before
    w.page.evaluate("window.scrollTo(0, 0)")
    w.shoot("launch-form-error")
    assert w.dialogs == []


def test_naming_an_image_warns_when_the_queue_has_no_container_worker(browse, stack):
    """The stack's agent runs the process backend only: an image on 'default' waits, and the form says so at once."""
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session/launch")
    expect(w.page.locator("#queue-image-warning")).to_be_hidden()
    w.page.fill("#f-image", "localhost/some-image:tag")
    w.page.locator("#f-image").dispatch_event("change")
    expect(w.page.locator("#queue-image-warning")).to_be_visible()
    expect(w.page.locator("#queue-warning")).to_be_hidden()
    w.page.fill("#f-image", "")
    w.page.locator("#f-image").dispatch_event("change")
    expect(w.page.locator("#queue-image-warning")).to_be_hidden()
    assert w.dialogs == []
