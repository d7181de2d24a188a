"""The Remote Desktop inside a container (issue #11 point 4) in a real browser: a container agent (Podman, the test
image holds Xvnc, openbox and xterm) runs the desktop; the shareable link shows it on the noVNC canvas through
the gateway and the tunnel, and a command typed in its terminal runs inside the container, in the session's home."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from berth.settings import AgentSettings
from conftest import ADMIN_PASSWORD
from container_image import AGENT_ENV, IMAGE, container_exists, ensure_test_image
from playwright.sync_api import expect
from test_desktop import CANVAS_STATS, TERMINAL_CENTRE, _type_line, _wait

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")]
pytest_plugins = ["browserkit"]  # the browse fixture

QUEUE = "ctr-desk-browser"
HOMES = AgentSettings.model_fields["homes_dir"].default / "containers"  # the agent's default homes_dir


@pytest.fixture(scope="module")
def cstack(server_only, tmp_path_factory):
    ensure_test_image()
    server_only.start_agent(name="ctr-desk-browser", queue=QUEUE, data_dir=tmp_path_factory.mktemp("ctr-desk-browser"),
                            env={**AGENT_ENV, "BERTH_AGENT_CONTAINER_IMAGE": IMAGE})
    return server_only


def test_the_desktop_in_a_container_shows_on_the_canvas_and_its_terminal_runs_inside(browse, cstack):
    view = cstack.api("POST", "/api/v1/sessions", json={"app": "remote-desktop",
                                                        "config": {"name": "ctr-desk", "type": "desktop", "queue": QUEUE}})
    sid = view["id"]
    try:
        view = cstack.wait_status(sid, "active", "idle", timeout=180)
        assert any("isolation: runc container" in line for line in cstack.events(sid))
        w = browse(cstack.url)
        w.page.goto(view["links"]["browser"])
        w.log_in("admin", ADMIN_PASSWORD, w.page.url)
        expect(w.page.locator("#desktop-status")).to_have_text("connected", timeout=30_000)
        stats = _wait(w.page, lambda s: s["colours"] >= 3, what="the desktop's pixels (not blank)")
        assert stats["width"] > 0 and stats["height"] > 0
        w.shoot("container-desktop")

        # typing reaches the terminal inside the container: its background turns red, and the file it makes
        # lands in the session's home, bind-mounted at the same path on the worker
        marker = f"berth-ctr-desktop-{uuid.uuid4().hex[:10]}"
        terminal = _wait_terminal(w.page)
        w.page.locator("#screen canvas").click(position=terminal)
        _type_line(w.page, "")  # the window manager moves the focus a moment after the click
        w.page.wait_for_timeout(300)
        _type_line(w.page, f"touch ~/{marker}; printf '\\033]11;#ff0000\\007'")
        _wait(w.page, lambda s: s["red"] > 500, what="the terminal's red background")
        made = _wait_for_file(HOMES / sid / marker)
        assert os.stat(made).st_uid >= 100_000  # the mapped session user, never root
    finally:
        cstack.api("POST", f"/api/v1/sessions/{sid}/stop")
        cstack.wait_status(sid, "stopped", "failed", timeout=60)
    assert not container_exists(sid)


def _wait_terminal(page, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = page.evaluate(TERMINAL_CENTRE)
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"no terminal window on the desktop: {page.evaluate(CANVAS_STATS)}")


def _wait_for_file(path: Path, timeout: float = 15.0) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), f"the typed command did not make {path}"
    return path
