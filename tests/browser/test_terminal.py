"""The browser terminal on an SSH Session's dashboard: a real agent's session, the Terminal button, xterm.js
(DOM renderer) over `/s/<id>/terminal` with the browser login's cookie; typing runs commands in the session,
resizing the page resizes the pty, Close ends the login. The page logs no error (a CSP violation is one)."""

from __future__ import annotations

import re

import pytest
from conftest import ADMIN_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture


@pytest.fixture(scope="module")
def session(stack):
    view = stack.cli_json("launch", "ssh-session", "--name", "term-dev", "--wait")
    yield view
    stack.api("POST", f"/api/v1/sessions/{view['id']}/stop")


def _size_shown(page, not_cols: int = 0, timeout: float = 20_000) -> tuple[int, int]:
    """`stty size` typed into the terminal: the rows and columns the shell sees, read from xterm's rows (a line
    saying `not_cols` columns is an earlier answer)."""
    page.keyboard.type("clear; stty size\n")
    found = page.wait_for_function("""(notCols) => {
        const rows = [...document.querySelectorAll('#terminal-panel .xterm-rows > div')].map((d) => d.textContent.trim());
        return rows.find((t) => /^\\d+ \\d+$/.test(t) && Number(t.split(" ")[1]) !== notCols) || false;
    }""", arg=not_cols, timeout=timeout).json_value()
    rows, cols = map(int, found.split())
    return rows, cols


def test_terminal_runs_commands_typed_in_the_dashboard(browse, stack, session):
    w = browse(stack.url)
    w.log_in("admin", ADMIN_PASSWORD, f"/login?next=/sessions/{session['id']}")
    panel = w.page.locator("#terminal-panel")
    expect(panel).to_be_hidden()
    w.page.click("#terminal-open")
    expect(panel).to_be_visible()
    expect(w.page.locator("#terminal-state")).to_have_text("connected", timeout=30_000)
    rows = w.page.locator("#terminal-panel .xterm-rows")
    expect(rows).to_contain_text(re.compile(r"\$\s*$", re.M), timeout=20_000)  # the prompt
    w.page.keyboard.type("echo $((6*7))\n")
    expect(rows.locator("div", has_text=re.compile(r"^\s*42\s*$"))).to_have_count(1, timeout=20_000)
    # the pty has the size the panel shows; a narrower window gives fewer columns
    _rows_before, before = _size_shown(w.page)
    w.page.set_viewport_size({"width": 900, "height": 820})
    w.page.wait_for_timeout(500)
    _rows_after, after = _size_shown(w.page, not_cols=before)
    assert after < before, (before, after)
    assert session["ssh"]["password"] not in w.page.locator("#terminal-panel").inner_html()
    w.shoot("terminal")
    # exit ends the shell: the panel says so
    w.page.keyboard.type("exit 5\n")
    expect(w.page.locator("#terminal-state")).to_have_text("the shell exited (status 5)", timeout=20_000)
    # Terminal again: a new login; Close hides the panel
    w.page.click("#terminal-open")
    expect(w.page.locator("#terminal-state")).to_have_text("connected", timeout=30_000)
    w.page.click("#terminal-close")
    expect(panel).to_be_hidden()
