"""Persistent workspaces through the whole platform: stored on stop, synced on demand and periodically, restored
by session ID and by clone, over real SSH logins."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from test_ssh_session import openssh as _openssh


def openssh(view, command: str, **kw):
    """Logins start in the workspace; these tests name paths from the home directory."""
    return _openssh(view, "cd ~ && " + command, **kw)

WRITE_TREE = (
    "mkdir -p ws/src/pkg ws/empty ws/data && echo kept > ws/note.txt && printf 'x%.0s' $(seq 1 5000) > ws/data/big.txt"
    " && echo 'print(1)' > ws/src/pkg/run.py && chmod 755 ws/src/pkg/run.py && ln -s src/pkg/run.py ws/link"
    " && touch -d '2020-01-02 03:04:05' ws/note.txt && mkdir -p ws/__pycache__ && echo junk > ws/__pycache__/x.pyc"
)
READ_TREE = ("cd ws && cat note.txt && stat -c '%a %Y' src/pkg/run.py note.txt && readlink link && test -d empty && echo empty-ok"
             " && wc -c < data/big.txt && (test -e __pycache__/x.pyc && echo cache-kept || echo cache-excluded)")


def launch(stack, *args: str) -> dict:
    return stack.cli_json("launch", "ssh-session", "--workspace", "~/ws", "--wait", *args)


def test_workspace_is_stored_on_stop_and_restored_by_session_id(stack):
    first = launch(stack)
    assert openssh(first, WRITE_TREE).returncode == 0
    before = openssh(first, READ_TREE).stdout
    stack.cli("sessions", "stop", first["id"])
    assert any("final sync stored snapshot" in e for e in stack.events(first["id"]))
    second = launch(stack, "--restore-session", first["id"])
    try:
        assert second["restored_from"] == first["id"]
        after = openssh(second, READ_TREE).stdout
        assert after.replace("cache-kept", "cache-excluded") == before.replace("cache-kept", "cache-excluded")
        assert "cache-excluded" in after
        assert any(e.startswith("workspace: restored snapshot") for e in stack.events(second["id"]))
        assert openssh(second, "id -un; stat -c %U ws/note.txt").stdout.split()[0] == \
               openssh(second, "stat -c %U ws/note.txt").stdout.strip()  # restored files belong to the new session user
    finally:
        stack.cli("sessions", "stop", second["id"])


def test_clone_restores_the_source_workspace(stack):
    source = launch(stack)
    openssh(source, "echo from-source > ws/cloned.txt")
    stack.cli("sessions", "stop", source["id"])
    clone = stack.cli_json("sessions", "clone", source["id"], "--wait")
    try:
        assert clone["restored_from"] == source["id"]
        assert openssh(clone, "cat ws/cloned.txt").stdout.strip() == "from-source", stack.events(clone["id"])
    finally:
        stack.cli("sessions", "stop", clone["id"])


def test_on_demand_sync_from_cli_and_from_inside_the_session(stack):
    view = launch(stack)
    try:
        openssh(view, "echo v1 > ws/v.txt")
        result = stack.cli("sessions", "sync", view["id"])
        assert "stored snapshot" in result.stderr
        inside = openssh(view, "echo v2 > ws/v.txt && berth-sync")
        assert inside.returncode == 0 and inside.stdout.startswith("ok"), inside.stdout + inside.stderr
        snapshots = stack.cli_json("workspaces", "list", "--session", view["id"])
        assert len(snapshots) >= 2
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_periodic_sync_and_show_reports_last_snapshot(stack, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"workspace": "~/ws", "sync_minutes": 0.05}}))
    view = stack.cli_json("launch", "ssh-session", "--config", str(cfg), "--wait")
    try:
        openssh(view, "echo periodic > ws/p.txt")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("periodic sync stored" in e for e in stack.events(view["id"])):
            time.sleep(0.5)
        assert any("periodic sync stored" in e for e in stack.events(view["id"]))
        shown = stack.cli_json("sessions", "show", view["id"])
        assert shown["last_snapshot"]["files"] >= 1 and shown["last_snapshot"]["created_at"]
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_killed_supervisor_loses_at_most_one_interval(stack):
    view = launch(stack)
    openssh(view, "echo synced > ws/a.txt")
    stack.cli("sessions", "sync", view["id"])
    openssh(view, "echo not-synced > ws/b.txt")
    agent_dir = stack.tmp / "agent-agent" / "sessions" / view["id"]
    os.kill(int((agent_dir / "supervisor.pid").read_text()), signal.SIGKILL)
    stack.wait_status(view["id"], "failed", timeout=30)
    again = launch(stack, "--restore-session", view["id"])
    try:
        assert openssh(again, "cat ws/a.txt; test -e ws/b.txt || echo b-missing").stdout.split() == ["synced", "b-missing"]
    finally:
        stack.cli("sessions", "stop", again["id"])


def test_restore_of_a_session_without_snapshot_says_so(stack):
    stack.api("POST", "/api/v1/queues", json={"name": "parked"})  # no agent serves it: the session never starts
    empty = stack.cli_json("launch", "ssh-session", "--workspace", "~/ws", "--queue", "parked")
    stack.cli("sessions", "stop", empty["id"])
    view = launch(stack, "--restore-session", empty["id"])
    try:
        assert any("has no stored workspace" in e for e in stack.events(view["id"]))
    finally:
        stack.cli("sessions", "stop", view["id"])


@pytest.mark.parametrize("limit_gb", ["0.000001"])
def test_workspace_over_the_size_limit_fails_the_final_sync_and_keeps_old_snapshot(stack, tmp_path, limit_gb):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"workspace": "~/ws", "workspace_max_gb": float(limit_gb)}}))
    view = stack.cli_json("launch", "ssh-session", "--config", str(cfg), "--wait")
    openssh(view, "head -c 100 /dev/zero > ws/small.bin")
    stack.cli("sessions", "sync", view["id"])
    openssh(view, "head -c 5000000 /dev/urandom > ws/big.bin")
    stopped = stack.cli_json("sessions", "stop", view["id"])
    assert stopped["status"] == "failed" and "final workspace sync failed" in stopped["error"]
    again = launch(stack, "--restore-session", view["id"])
    try:
        assert openssh(again, "ls ws").stdout.split() == ["small.bin"]
    finally:
        stack.cli("sessions", "stop", again["id"])
