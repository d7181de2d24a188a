"""The settings and admin pages in a real browser: add an SSH key, create and revoke a token (its secret shown
once), change the password and log in with the new one; screenshots of settings, projects, users and workers."""

from __future__ import annotations

import re

import pytest
from conftest import ADMIN_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNldHRpbmdzYnJvd3NlcnRlc3RrZXkxMjM0NTY3ODkw sam@laptop"


@pytest.fixture(scope="module")
def sam(server_only):
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "sam", "password": "sam-password"})
    s.api("POST", "/api/v1/users", json={"username": "tess", "password": "tess-password"})
    sam = s.api("POST", "/api/v1/auth/login", json={"username": "sam", "password": "sam-password"})["token"]
    s.api("POST", "/api/v1/projects", token=sam, json={"name": "vision"})
    s.api("PUT", "/api/v1/projects/vision/members", token=sam, json={"username": "tess", "role": "viewer"})
    return "sam"


def test_settings_walk_keys_tokens_and_password(browse, server_only, sam):
    w = browse(server_only.url)
    w.accept_confirm = True
    w.log_in("sam", "sam-password")
    w.page.click("nav.mainnav >> text=Settings")
    expect(w.page).to_have_url(re.compile(r"/settings$"))
    expect(w.page.locator("#profile")).to_contain_text("vision")

    w.page.fill("#f-key", "ssh-rsa")
    w.page.click("#ssh-keys button[type=submit]:has-text('Add key')")
    expect(w.page.locator("#e-key")).to_have_text("not an OpenSSH public key line")
    w.page.fill("#f-key", KEY)
    w.page.click("#ssh-keys button[type=submit]:has-text('Add key')")
    expect(w.page.locator(".alert.notice")).to_have_text("SSH key added.")
    expect(w.page.locator(".key-list li")).to_contain_text("sam@laptop")

    w.page.fill("#f-label", "laptop gateway")
    w.page.fill("#f-expires_days", "14")
    w.page.click("button:has-text('Create token')")
    secret = w.page.locator("#new-token").inner_text()
    assert secret and len(secret) > 30
    w.shoot("settings-token-created")
    me = server_only.api("GET", "/api/v1/users/me", token=secret)
    assert me["username"] == "sam"
    w.page.goto("/settings")
    assert secret not in w.page.content()
    row = w.page.locator("tr", has_text="laptop gateway")
    row.locator("button:has-text('Revoke')").click()
    expect(w.page.locator(".alert.notice")).to_have_text("Token revoked.")
    expect(w.page.locator("tr", has_text="laptop gateway")).to_contain_text("revoked")
    assert any("Revoke this token" in d for d in w.dialogs)
    w.page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar then sits at the top of the full-page shot
    w.shoot("settings")

    w.page.fill("#f-current_password", "not-my-password")
    w.page.fill("#f-new_password", "sam-new-password")
    w.page.fill("#f-new_password_again", "sam-new-password")
    w.page.click("button:has-text('Change password')")
    expect(w.page.locator("#e-current_password")).to_have_text("that is not your current password")
    w.page.fill("#f-current_password", "sam-password")
    w.page.fill("#f-new_password", "sam-new-password")
    w.page.fill("#f-new_password_again", "sam-new-password")
    w.page.click("button:has-text('Change password')")
    expect(w.page.locator(".alert.notice")).to_contain_text("Password changed")
    w.page.click("button:has-text('Log out')")
    w.log_in("sam", "sam-password")
    expect(w.page.locator(".alert.error")).to_have_text("Wrong username or password.")
    w.log_in("sam", "sam-new-password")
    expect(w.page).to_have_url(re.compile(r"/$"))

    w.page.goto("/projects/vision")
    expect(w.page.locator("tr[data-member='tess']")).to_contain_text("viewer")
    w.shoot("project-members")
    w.page.goto("/projects")
    w.shoot("projects")


def test_admin_pages_and_what_others_see(browse, server_only, sam):
    w = browse(server_only.url)
    w.log_in("admin", ADMIN_PASSWORD)
    expect(w.page.locator("nav.mainnav a")).to_have_text(["Apps", "Projects", "Workers", "Users", "Settings"])
    w.page.click("nav.mainnav >> text=Users")
    w.page.fill("#f-username", "<b>x</b>")
    w.page.fill("#f-password", "long-enough-pw")
    w.page.click("button:has-text('Create user')")
    expect(w.page.locator("#e-username")).to_contain_text("lower-case letters")
    w.page.fill("#f-username", "uma")
    w.page.fill("#f-password", "uma-password")
    w.page.click("button:has-text('Create user')")
    expect(w.page.locator("tr[data-user='uma']")).to_be_visible()
    w.shoot("users")
    w.page.click("nav.mainnav >> text=Workers")
    expect(w.page.locator("tr[data-queue='default']")).to_be_visible()
    w.shoot("workers")

    t = browse(server_only.url)
    t.log_in("tess", "tess-password")
    expect(t.page.locator("nav.mainnav a")).to_have_text(["Apps", "Projects", "Queues", "Settings"])
    t.page.goto("/projects/vision")
    expect(t.page.locator("tr[data-member='sam']")).to_be_visible()
    expect(t.page.locator("select[name=role]")).to_have_count(0)
    t.shoot("project-members-viewer")
    t.page.goto("/workers")
    t.shoot("queues")
    response = t.page.goto("/users")
    assert response.status == 404
