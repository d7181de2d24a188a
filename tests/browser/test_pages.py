"""The pages in a real browser: login, the apps page, the instance list (live), the instance page, and what a
viewer, an outsider and a forger cannot do. Screenshots of each page, light and dark."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from conftest import ADMIN_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture

XSS_NAME = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def people(server_only):
    s = server_only
    for name in ("mia", "vic", "oscar"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    mia = s.api("POST", "/api/v1/auth/login", json={"username": "mia", "password": "mia-password"})["token"]
    oscar = s.api("POST", "/api/v1/auth/login", json={"username": "oscar", "password": "oscar-password"})["token"]
    s.api("POST", "/api/v1/projects", token=oscar, json={"name": "oscars"})  # an outsider with a project of his own
    session = s.api("POST", "/api/v1/sessions", token=mia, json={
        "app": "ssh-session", "config": {"name": "mia-dev", "project": "robotics", "tags": ["gpu", "nightly"]}})
    s.api("PUT", "/api/v1/projects/robotics/members", token=mia, json={"username": "vic", "role": "viewer"})
    return {"mia": mia, "session": session["id"]}


def test_login_with_a_wrong_password_says_so_then_logs_in(browse, server_only):
    w = browse(server_only.url)
    w.page.goto("/")
    expect(w.page).to_have_url(re.compile(r"/login$"))
    expect(w.page.locator("h1")).to_have_text("Log in to berth")
    w.shoot("login")
    w.log_in("admin", "wrong-password-123", path=w.page.url)
    expect(w.page.locator(".alert.error")).to_have_text("Wrong username or password.")
    assert "wrong-password-123" not in w.page.content()
    assert w.page.input_value("input[name=password]") == ""
    w.shoot("login-failed")
    w.log_in("admin", ADMIN_PASSWORD, path=w.page.url)
    expect(w.page).to_have_url(re.compile(r"/$"))
    expect(w.page.locator(".app-title")).to_have_text(["SSH Session", "Remote Desktop"])
    w.shoot("apps")


def test_the_list_shows_a_session_launched_through_the_api_and_its_status_changes_without_a_reload(
        browse, server_only, people):
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session")
    expect(w.page).to_have_url(re.compile(r"/apps/ssh-session$"))
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "live-one", "tags": ["demo"]}})
    row = w.page.locator(f"tr[data-session='{view['id']}']")
    expect(row).to_be_visible(timeout=10_000)  # appeared by polling
    expect(row.locator(".status-label")).to_have_text("setting up")
    expect(row).to_contain_text("live-one")
    expect(row).to_contain_text("Interactive Session")
    expect(row).to_contain_text("admin")
    expect(row).to_contain_text("default")
    expect(w.page.locator(f"tr[data-session='{people['session']}']")).to_contain_text("robotics")
    total = len(server_only.api("GET", "/api/v1/sessions", params={"app": "ssh-session"}))
    expect(w.page.locator("#pager")).to_contain_text(f"of {total}")  # the count follows the rows
    w.shoot("instances")
    w.page.evaluate("window.__sameDocument = true")
    server_only.api("POST", f"/api/v1/sessions/{view['id']}/stop")
    expect(row.locator(".status-label")).to_have_text("stopped", timeout=10_000)
    assert w.page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    # filters and sorting are links and forms of the page
    w.page.select_option("select[name=status]", "stopped")
    w.page.click("form.filters button[type=submit]")
    expect(w.page.locator("tbody tr[data-session]")).to_have_count(1)
    w.page.click("th a.sort:has-text('Name')")
    expect(w.page).to_have_url(re.compile(r"sort=name"))


def test_a_session_named_like_html_renders_as_text(browse, server_only):
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": XSS_NAME, "tags": ["<b>bold</b>"]}})
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD, "/login?next=/apps/ssh-session")
    row = w.page.locator(f"tr[data-session='{view['id']}']")
    expect(row.locator("td.name a")).to_have_text(XSS_NAME)
    expect(row.locator(".chip")).to_have_text("<b>bold</b>")
    w.page.wait_for_timeout(3500)  # one poll of the rows too
    row.locator("td.name a").click()
    expect(w.page.locator("h1")).to_have_text(XSS_NAME)
    assert w.page.locator("img").count() == 0 and w.page.locator("b").count() == 0
    assert w.dialogs == [], w.dialogs
    w.shoot("instance")


def test_a_member_stops_a_session_after_confirming(browse, server_only):
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "to-stop"}})
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD, f"/login?next=/sessions/{view['id']}")
    expect(w.page.locator(".status-banner .status-label")).to_have_text("setting up")
    expect(w.page.locator("#session-id")).to_have_text(view["id"])
    w.page.click("#stop")  # dismissed: nothing happens
    assert w.dialogs and w.dialogs[-1].startswith("confirm: Stop “to-stop”?")
    assert server_only.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "queued"
    w.accept_confirm = True
    w.page.click("#stop")
    expect(w.page.locator(".status-banner .status-label")).to_have_text("stopped")
    expect(w.page.locator("#stop")).to_be_disabled()
    assert server_only.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "stopped"


def test_a_viewer_sees_the_session_but_cannot_stop_it(browse, server_only, people):
    w = browse(server_only.url)
    w.log_in("vic", "vic-password", f"/login?next=/sessions/{people['session']}")
    expect(w.page.locator("h1")).to_have_text("mia-dev")
    expect(w.page.locator("#stop")).to_have_count(0)
    forged = w.page.request.post(f"/sessions/{people['session']}/stop", headers={"X-CSRF-Token": w.csrf()},
                                 max_redirects=0)
    assert forged.status == 403 and "member role in project" in forged.text()
    assert server_only.api("GET", f"/api/v1/sessions/{people['session']}")["status"] == "queued"


def test_an_outsider_gets_the_same_404_page_as_for_a_missing_session(browse, server_only, people):
    w = browse(server_only.url)
    w.log_in("oscar", "oscar-password")
    real, missing = people["session"], "0" * len(people["session"])
    got = w.page.goto(f"/sessions/{real}")
    real_text = w.page.locator("main").inner_text()
    none = w.page.goto(f"/sessions/{missing}")
    assert got.status == none.status == 404
    assert real_text == w.page.locator("main").inner_text().replace(missing, real)
    w.page.goto("/apps/ssh-session")
    expect(w.page.locator("tbody")).not_to_contain_text("mia-dev")


def test_a_post_without_the_csrf_token_is_refused(browse, server_only):
    view = server_only.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "csrf-target"}})
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        r = w.page.request.post(f"/sessions/{view['id']}/stop", headers=headers, max_redirects=0)
        assert r.status == 403 and "security token" in r.text()
    assert server_only.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "queued"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "https://evil.example", "/%09/evil.example",
                                    "/%252F%252Fevil.example"])
def test_open_redirect_attempts_land_on_the_home_page(browse, server_only, target):
    w = browse(server_only.url)
    # nothing may leave this server (the browser would go elsewhere)
    w.page.route("**/*", lambda route: route.continue_() if urlsplit(route.request.url).hostname == "127.0.0.1" else route.abort())
    w.page.goto("/login?next=" + target.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C"))
    w.log_in("admin", ADMIN_PASSWORD, path=w.page.url)
    assert w.page.url == server_only.url + "/"


def test_logout_ends_the_cookie_session(browse, server_only):
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD)
    cookies = w.page.context.cookies()
    assert [c for c in cookies if c["name"] == "berth_web" and c["httpOnly"] and c["sameSite"] == "Lax"]
    w.page.click("text=Log out")
    expect(w.page).to_have_url(re.compile(r"/login$"))
    w.page.goto("/")
    expect(w.page).to_have_url(re.compile(r"/login$"))
    replay = browse(server_only.url)
    replay.page.context.add_cookies(cookies)  # a copy of the old cookie opens nothing either
    replay.page.goto("/apps/ssh-session")
    expect(replay.page).to_have_url(re.compile(r"/login\?next="))
