"""The instance page of a session a real agent runs: the status goes from setting up to active without a
reload, the password stays hidden until revealed, the connect command and password copied from the page log in."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from conftest import ADMIN_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "PubkeyAuthentication=no"]


def test_status_goes_live_and_the_connection_details_copy(browse, stack):
    w = browse(stack.url, permissions=("clipboard-read", "clipboard-write"))
    view = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "web-dev", "tags": ["web"]}})
    w.log_in("admin", ADMIN_PASSWORD, f"/login?next=/sessions/{view['id']}")
    expect(w.page.locator("h1")).to_have_text("web-dev")
    w.page.evaluate("window.__sameDocument = true")
    expect(w.page.locator(".status-banner .status-label")).to_have_text("active", timeout=90_000)
    assert w.page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    ssh = stack.api("GET", f"/api/v1/sessions/{view['id']}")["ssh"]
    password = w.page.locator("#ssh-password")
    assert ssh["password"] not in password.inner_text()
    w.page.click("[data-reveal='#ssh-password']")
    expect(password).to_have_text(ssh["password"])
    w.page.click("[data-reveal='#ssh-password']")
    expect(password).not_to_contain_text(ssh["password"])
    expect(w.page.locator("#ssh-address")).to_have_text(f"{ssh['host']}:{ssh['port']}")
    w.page.click("[data-copy='#ssh-command']")
    command = w.page.evaluate("navigator.clipboard.readText()")
    assert command == ssh["command"]
    w.page.click("[data-copy='#ssh-password']")  # the password copies while still hidden
    copied_password = w.page.evaluate("navigator.clipboard.readText()")
    assert copied_password == ssh["password"]
    # What was copied from the page logs in: the command as a user pastes it, the password as the prompt wants it.
    login = subprocess.run(["sshpass", "-p", copied_password, *shlex.split(command)[:1], *SSH_OPTIONS,
                            *shlex.split(command)[1:], "echo", "logged-in-as", "$(id -un)"],
                           capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["logged-in-as", ssh["user"]]
    w.shoot("instance-active")
    w.page.goto("/apps/ssh-session")
    expect(w.page.locator(f"tr[data-session='{view['id']}'] .status-label")).to_have_text("active")
    w.shoot("instances-active")
    assert w.dialogs == []
