"""Fixtures and helpers of the browser tests (a module the tests import them from, not a conftest.py: a second
conftest module would shadow tests/conftest.py for `from conftest import ...`).

The browser tests: Debian's Chromium (/usr/bin/chromium, from scripts/setup.sh) driven by Playwright against a
real server (tests/conftest.py `server_only`). Marked `browser`: scripts/test.sh runs them in the SQLite run
only (the PostgreSQL run deselects them; the pages' SQL is covered there by tests/integration/test_web_*).

Screenshots (light and dark) go to $BERTH_TEST_ARTIFACTS/screenshots, or <tmp>/berth-test-artifacts/screenshots.
Each test module sets `pytestmark = pytest.mark.browser` and `pytest_plugins = ["browserkit"]`, and reaches
the helpers through the pages `browse` opens (no import of this module: pytest loads it as a plugin).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("BERTH_TEST_CHROMIUM", "/usr/bin/chromium")  # `playwright install` cannot download here


class Watched:
    """A page with what it did that it should not have: dialogs (alert: injected script ran) and console
    errors (a Content-Security-Policy violation is one); and the helpers the tests use on it."""

    def __init__(self, page: Page, screenshots: Path) -> None:
        self.page = page
        self.screenshots = screenshots
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        # an error answer the test asked for is logged too ("Failed to load resource: ... 404"): not a fault
        page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
                and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.accept_confirm = False

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm" and self.accept_confirm:
            dialog.accept()
        else:
            dialog.dismiss()

    def log_in(self, username: str, password: str, path: str = "/login") -> None:
        self.page.goto(path)
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state()

    def csrf(self) -> str:
        """The session's CSRF token, as htmx sends it (hx-headers on <body>)."""
        return self.page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")

    def shoot(self, name: str) -> None:
        """Light and dark screenshots of what the page shows now."""
        for scheme in ("light", "dark"):
            self.page.emulate_media(color_scheme=scheme)
            self.page.screenshot(path=str(self.screenshots / f"{name}-{scheme}.png"), full_page=True)
        self.page.emulate_media(color_scheme="light")


@pytest.fixture(scope="module")
def chromium() -> Browser:
    # Module scope, not session: Playwright's sync API keeps an event loop running in this thread while it is
    # open, and every later test calling asyncio.run() would fail ("cannot be called from a running event loop").
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    base = os.environ.get("BERTH_TEST_ARTIFACTS") or os.path.join(tempfile.gettempdir(), "berth-test-artifacts")
    path = Path(base) / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browse(chromium, screenshots):
    """browse(server_url) -> a watched page in a fresh browser context (its own cookies); none may log errors."""
    opened = []

    def open_page(url: str, permissions: tuple[str, ...] = ()) -> Watched:
        context = chromium.new_context(base_url=url, viewport={"width": 1280, "height": 820})
        if permissions:
            context.grant_permissions(list(permissions), origin=url)
        watched = Watched(context.new_page(), screenshots)
        opened.append((context, watched))
        return watched

    yield open_page
    errors = [e for _c, w in opened for e in w.errors]
    for context, _w in opened:
        context.close()
    assert not errors, f"the pages logged errors: {errors}"
