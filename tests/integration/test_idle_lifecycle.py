"""Idle detection end to end: busy sessions stay, abandoned ones stop at their limit (after storing their
workspace), an open but unused SSH connection does not keep a session alive, typing does."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import asyncssh
import pytest

from conftest import Stack, make_database_url
from test_ssh_session import openssh

LIMIT_H = 0.005  # 18 s: over the input window, so a warning comes before the shutdown


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory, pg_admin_url):
    """An agent with a short input window (15 s), so typing and its absence show within a test, posting its
    samples every 2 s rather than 10, so the metrics test sees a few without waiting."""
    import os

    s = Stack(tmp_path_factory.mktemp("idle"), make_database_url(pg_admin_url))
    os.environ["BERTH_AGENT_IDLE_INPUT_WINDOW_S"] = "15"
    os.environ["BERTH_AGENT_METRICS_POST_S"] = "2"
    try:
        s.start_server()
        s.login()
        s.start_agent()
        yield s
    finally:
        os.environ.pop("BERTH_AGENT_IDLE_INPUT_WINDOW_S", None)
        os.environ.pop("BERTH_AGENT_METRICS_POST_S", None)
        s.stop()


def launch(stack, *args) -> dict:
    return json.loads(stack.cli("launch", "ssh-session", "--max-idle-hours", str(LIMIT_H), "--workspace", "~/ws",
                                "--wait", "--json", *args).stdout)


def launch_together(stack, *arg_lists: tuple[str, ...]) -> list[dict]:
    """Several launches at once: the agent sets them up side by side."""
    with ThreadPoolExecutor(len(arg_lists)) as pool:
        return list(pool.map(lambda args: launch(stack, *args), arg_lists))


async def hold_terminal(view: dict, seconds: float, type_every: float | None) -> str:
    ssh = view["ssh"]
    out = []
    async with asyncssh.connect(ssh["host"], port=ssh["port"], username=ssh["user"], password=ssh["password"],
                                known_hosts=None) as conn:
        async with conn.create_process(term_type="xterm") as proc:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if type_every:
                    proc.stdin.write("true\n")
                try:
                    out.append(await asyncio.wait_for(proc.stdout.read(4096), type_every or 2))
                except asyncio.TimeoutError:
                    pass
                except (asyncssh.Error, OSError, EOFError):
                    break
                if proc.stdout.at_eof():
                    break
    return "".join(out)


def test_idle_rules_end_to_end(idle_stack):
    s = idle_stack
    # extended: well past the limit, it must outlive the others' shutdowns
    busy, honoured, extended = launch_together(s, (), ("--idle-cpu", "95"), ())
    s.cli("sessions", "extend", extended["id"], "--hours", "0.05")
    # busy: a training-like process keeps it alive; honoured: the same load is under its 95% threshold
    for view in (busy, honoured):
        assert openssh(view, "setsid nohup python3 -c 'while True: pass' >/dev/null 2>&1 < /dev/null &").returncode == 0
    # launched last, just before their terminals open, so that neither reaches the limit before
    abandoned, typing = launch_together(s, (), ())
    assert openssh(abandoned, "echo before-idle > ~/ws/kept.txt").returncode == 0

    async def terminals():  # typing for 1.5 times the limit; the unused terminal ends when its session stops
        return await asyncio.gather(hold_terminal(abandoned, 45, None), hold_terminal(typing, 27, 3))

    abandoned_out, _ = asyncio.run(terminals())

    # the open, unused terminal did not keep it alive: it was warned, stored its workspace, then stopped
    final = s.wait_status(abandoned["id"], "stopped", timeout=30)
    events = s.events(abandoned["id"])
    assert "berth: this session has been idle" in abandoned_out
    assert any(e.startswith("idle: idle for") for e in events)
    assert [i for i, e in enumerate(events) if "final sync stored" in e][0] < events.index("status: stopped")
    assert any(e == "status: idle" for e in events), "status moves to idle before the shutdown"
    assert final["error"] is None

    # typing for longer than the limit kept it alive
    view = s.api("GET", f"/api/v1/sessions/{typing['id']}")
    assert view["status"] in ("active", "idle")
    # busy stays busy, with the reason shown
    view = s.api("GET", f"/api/v1/sessions/{busy['id']}")
    assert view["status"] == "active"
    assert any(r.startswith("cpu ") for r in view["kept_alive_by"] or []), view
    # the threshold from the config was honoured: a busy process under it did not keep the session
    s.wait_status(honoured["id"], "stopped", timeout=30)
    # `sessions extend` pushed the shutdown back: idle as long as the abandoned one, still running
    view = s.api("GET", f"/api/v1/sessions/{extended['id']}")
    assert view["status"] in ("active", "idle") and view["idle_extended_until"], view
    # and the abandoned session's workspace is restorable
    again = launch(s, "--restore-session", abandoned["id"], "--max-idle-hours", "1")
    try:
        assert openssh(again, "cat ~/ws/kept.txt").stdout.strip() == "before-idle"
    finally:  # each stop waits for its final sync: side by side
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda view: s.cli("sessions", "stop", view["id"]), (again, busy, typing, extended)))


def test_metrics_of_a_real_session(idle_stack):
    s = idle_stack
    view = launch(s, "--max-idle-hours", "1")
    try:
        openssh(view, "setsid nohup python3 -c 'import time\nx=bytearray(80*2**20)\nt=time.time()\nwhile time.time()-t<20: pass' "
                      ">/dev/null 2>&1 < /dev/null &")
        deadline = time.monotonic() + 40  # samples every 2 s, sent every 2 s here
        data = {}
        while time.monotonic() < deadline:
            data = json.loads(s.cli("sessions", "metrics", view["id"], "--json").stdout)
            got = data["series"]
            if data["samples"] >= 3 and max(got["mem_mb"]["max"] or [0]) > 50 and max(got["cpu"]["max"] or [0]) > 50:
                break
            time.sleep(2)
        assert data["samples"] >= 3
        assert max(data["series"]["mem_mb"]["max"]) > 50, "the 80 MB process of the session is seen"
        assert max(data["series"]["cpu"]["max"]) > 50, "its busy loop is seen"
        text = json.dumps(data)
        for series in ("cpu", "mem_mb", "disk_read_mbs", "disk_write_mbs", "net_rx_mbs", "net_tx_mbs"):
            assert series in text, series
        assert data["network_scope"] == "session", "the session's own traffic, not the worker's"
        table = s.cli("sessions", "metrics", view["id"]).stdout
        assert "CPU" in table and "memory" in table
    finally:
        s.cli("sessions", "stop", view["id"])
