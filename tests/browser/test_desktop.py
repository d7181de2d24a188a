"""The Remote Desktop in a real browser: the shareable link opened logged out -> login -> the desktop page, noVNC
showing the session's real Xvnc desktop through the gateway and the agent tunnel; typing reaches the terminal,
the clipboard panel reaches the desktop, and the remote desktop follows the browser window."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from conftest import ADMIN_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
pytest_plugins = ["browserkit"]  # the browse fixture

# What the canvas shows, from its own pixels: size, how many colours, how many pure red pixels.
CANVAS_STATS = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  let red = 0;
  for (let i = 0; i < data.length; i += 4 * 7) {
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    if (data[i] > 240 && data[i + 1] < 16 && data[i + 2] < 16) red++;
  }
  return {width: canvas.width, height: canvas.height, colours: colours.size, red: red,
          screenWidth: document.getElementById('screen').clientWidth,
          screenHeight: document.getElementById('screen').clientHeight};
}"""


# The centre of the terminal: the middle of the desktop's white pixels (xterm's background; the rest is dark).
TERMINAL_CENTRE = """() => {
  const canvas = document.querySelector('#screen canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let x0 = canvas.width, y0 = canvas.height, x1 = -1, y1 = -1;
  for (let y = 0; y < canvas.height; y += 4) for (let x = 0; x < canvas.width; x += 4) {
    const i = (y * canvas.width + x) * 4;
    if (data[i] > 250 && data[i + 1] > 250 && data[i + 2] > 250) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  }
  return x1 < 0 ? null : {x: Math.round((x0 + x1) / 2), y: Math.round((y0 + y1) / 2)};
}"""


def _wait(page, check, timeout: float = 30.0, what: str = "the canvas"):
    deadline = time.monotonic() + timeout
    stats = None
    while time.monotonic() < deadline:
        stats = page.evaluate(CANVAS_STATS)
        if stats and check(stats):
            return stats
        time.sleep(0.25)
    raise AssertionError(f"{what}: last seen {stats}")


def _type_line(page, text: str) -> None:
    page.keyboard.type(text, delay=15)
    page.keyboard.press("Enter")


def test_the_browser_link_logs_in_and_shows_a_working_desktop(browse, stack):
    view = stack.api("POST", "/api/v1/sessions", json={"app": "remote-desktop", "config": {"name": "desk", "type": "desktop"}})
    sid = view["id"]
    stack.wait_status(sid, "active", "idle", timeout=90)
    link = stack.api("GET", f"/api/v1/sessions/{sid}")["links"]["browser"]

    w = browse(stack.url, permissions=("clipboard-read", "clipboard-write"))
    w.page.goto(link)
    assert "/login?next=" in w.page.url  # logged out: the login page first
    w.log_in("admin", ADMIN_PASSWORD, w.page.url)
    assert w.page.url == link  # ... then back to the link, now with the session's cookie
    expect(w.page.locator("#desktop-status")).to_have_text("connected", timeout=30_000)
    _wait(w.page, lambda s: s["colours"] >= 3, what="the desktop's pixels (not blank)")
    # the remote framebuffer takes the window's size (a resize request right after connecting)
    before = _wait(w.page, lambda s: abs(s["width"] - s["screenWidth"]) <= 2 and abs(s["height"] - s["screenHeight"]) <= 2,
                   what="the remote desktop to take the window's size")
    w.shoot("desktop")

    # Typing reaches the terminal: its background turns red on the canvas, and the command's file exists.
    marker = f"/tmp/berth-desktop-{uuid.uuid4().hex[:10]}"
    canvas = w.page.locator("#screen canvas")
    terminal = w.page.evaluate(TERMINAL_CENTRE)
    assert terminal, "no terminal window on the desktop"
    canvas.click(position=terminal)  # focus the terminal window
    # The window manager moves the focus a moment after the click (longer under load): an empty line first, so no
    # keystroke of the command itself can go to the desktop before the terminal has the focus.
    _type_line(w.page, "")
    w.page.wait_for_timeout(300)
    _type_line(w.page, f"touch {marker}; printf '\\033]11;#ff0000\\007'")
    _wait(w.page, lambda s: s["red"] > 500, what="the terminal's red background")
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not os.path.exists(marker):
        w.shoot("desktop-typed-command-lost")
    assert os.path.exists(marker), "the typed command did not run"
    os.unlink(marker)

    # The clipboard panel's text reaches the desktop (pasted into the terminal with Shift+Insert).
    pasted = f"clip-{uuid.uuid4().hex[:8]}"
    w.page.click("#clipboard-toggle")
    w.page.fill("#clipboard-text", pasted)
    w.page.click("#clipboard-send")
    w.page.click("#clipboard-toggle")
    canvas.click(position=terminal)
    w.page.keyboard.type("echo ", delay=15)
    w.page.keyboard.press("Shift+Insert")
    _type_line(w.page, f" > {marker}")
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open(marker).read().strip() == pasted
    os.unlink(marker)

    # The remote desktop follows the window.
    w.page.set_viewport_size({"width": 960, "height": 640})
    after = _wait(w.page, lambda s: s["width"] != before["width"] and abs(s["width"] - s["screenWidth"]) <= 2
                  and abs(s["height"] - s["screenHeight"]) <= 2, what="the resized framebuffer")
    assert after["width"] < before["width"] and after["height"] < before["height"]
    w.shoot("desktop-resized")
    expect(w.page.locator("#dashboard-link")).to_have_attribute("href", f"/sessions/{sid}")
    expect(w.page.locator("#reconnect")).to_be_hidden()

    # The session ends: the status line says so, with the reason, and offers to reconnect.
    stack.api("POST", f"/api/v1/sessions/{sid}/stop")
    expect(w.page.locator("#desktop-status")).to_have_text(
        "disconnected: the session is not running: there is nothing to connect to", timeout=30_000)
    expect(w.page.locator("#reconnect")).to_be_visible()
    assert w.dialogs == []


def test_the_dashboard_shows_and_copies_both_links(browse, stack):
    view = stack.api("POST", "/api/v1/sessions", json={"app": "remote-desktop", "config": {"name": "desk-2", "type": "desktop"}})
    sid = view["id"]
    w = browse(stack.url, permissions=("clipboard-read", "clipboard-write"))
    w.log_in("admin", ADMIN_PASSWORD, f"/login?next=/sessions/{sid}")
    expect(w.page.locator(".status-banner .status-label")).to_have_text("active", timeout=90_000)
    links = stack.api("GET", f"/api/v1/sessions/{sid}")["links"]
    expect(w.page.locator("#browser-link")).to_have_text(links["browser"])
    expect(w.page.locator("#direct-link")).to_have_text(links["direct"])
    expect(w.page.locator("#session-id")).to_have_text(sid)
    w.page.click("[data-copy='#browser-link']")
    assert w.page.evaluate("navigator.clipboard.readText()") == links["browser"]
    w.page.click("[data-copy='#direct-link']")
    assert w.page.evaluate("navigator.clipboard.readText()") == links["direct"]
    w.shoot("instance-desktop")
    with w.page.expect_popup() as popup:  # a new tab, already logged in: straight to the desktop
        w.page.click("#open-desktop")
    desktop = popup.value
    expect(desktop.locator("#desktop-status")).to_have_text("connected", timeout=30_000)
    desktop.close()
