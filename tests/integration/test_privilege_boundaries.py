"""Issue #7: nothing done on a session's behalf runs as root on paths the session user controls.

Each test is an attack seen on a root agent, made by "mallory", a user who is not an admin and launches
into a project of her own; the victim is a root-owned file on the worker or another user's session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from test_ssh_session import openssh

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="per-session users need a root agent")]

HOMES = Path("/var/lib/berth/homes")


@pytest.fixture(scope="module")
def mallory(stack, tmp_path_factory):
    password = "mallory-" + uuid.uuid4().hex[:12]
    name = "mallory" + uuid.uuid4().hex[:6]
    stack.api("POST", "/api/v1/users", json={"username": name, "password": password})
    token = httpx.post(stack.url + "/api/v1/auth/login", json={"username": name, "password": password}).json()["token"]
    env = stack.env(BERTH_SERVER=stack.url, BERTH_TOKEN=token, HOME=str(tmp_path_factory.mktemp("mallory-home")))
    return {"token": token, "env": env, "project": f"proj-{name}"}


def launch_as(stack, who, *args: str) -> dict:
    return stack.cli_json("launch", "ssh-session", "--project", who["project"], "--wait", *args, env=who["env"])


def stop_as(stack, who, view) -> None:
    stack.cli("sessions", "stop", view["id"], env=who["env"], check=False)


@pytest.fixture
def victim_dir():
    """A root-owned place outside every session: a 0600 file and a 0700 directory with a secret."""
    base = Path(f"/var/tmp/berth-victim-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    (base / "secret.txt").write_text("root-only secret\n")
    os.chmod(base / "secret.txt", 0o600)
    (base / "private").mkdir(mode=0o700)
    (base / "private" / "key").write_text("root key\n")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_workspace_outside_the_home_is_refused_at_launch(stack, mallory):
    for path in ("/", "/etc", "/root/.ssh", "~/../../etc", "../x"):
        r = httpx.post(stack.url + "/api/v1/sessions", headers={"Authorization": f"Bearer {mallory['token']}"},
                       json={"app": "ssh-session", "config": {"project": mallory["project"], "workspace": path}})
        assert r.status_code == 422 and (r.json().get("field") or "").endswith("workspace"), (path, r.text)


def test_snapshot_does_not_read_through_a_link_out_of_the_home(stack, mallory, victim_dir, tmp_path):
    """Attack 2: the workspace becomes a link to somewhere only root may read; the final sync reads as the user."""
    script = tmp_path / "init.sh"
    script.write_text(f"rm -rf ~/ws && ln -s {victim_dir} ~/ws\n")
    view = launch_as(stack, mallory, "--workspace", "~/ws", "--init-script", str(script))
    assert view["status"] == "active", stack.events(view["id"])
    stop_as(stack, mallory, view)
    stack.wait_status(view["id"], "stopped", "failed")
    snaps = stack.cli_json("workspaces", "list", "--session", view["id"], env=mallory["env"])
    for snap in snaps:
        out = tmp_path / f"dl-{snap['id']}"
        stack.cli("workspaces", "download", snap["id"], str(out), env=mallory["env"])
        found = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert b"root-only secret\n" not in found.values() and b"root key\n" not in found.values(), found
    assert (victim_dir / "secret.txt").read_text() == "root-only secret\n"


def test_berth_sync_helper_is_not_written_through_a_planted_link(stack, mallory, victim_dir, tmp_path):
    """Attack 3: the init script swaps ~/.venv/bin/berth-sync for a link to a root-only file."""
    target = victim_dir / "secret.txt"
    before = (target.read_bytes(), mode_owner(target))
    script = tmp_path / "init.sh"
    script.write_text(f"ln -sf {target} ~/.venv/bin/berth-sync\n")
    view = launch_as(stack, mallory, "--workspace", "~/ws", "--init-script", str(script))
    try:
        assert view["status"] == "active", stack.events(view["id"])
        assert (target.read_bytes(), mode_owner(target)) == before
        out = openssh(view, "test -L ~/.venv/bin/berth-sync && echo link || echo file; berth-sync")
        assert out.stdout.splitlines()[0] == "file" and "ok: workspace stored" in out.stdout, out
    finally:
        stop_as(stack, mallory, view)


def test_sync_socket_lives_where_the_user_cannot_swap_it(stack, mallory):
    view = launch_as(stack, mallory, "--workspace", "~/ws")
    try:
        sock_dir = Path("/run/berth") / view["id"]
        mode, uid, gid = mode_owner(sock_dir)
        assert (mode, uid) == (0o710, 0) and gid == pwd.getpwnam(view["ssh"]["user"]).pw_gid
        out = openssh(view, f"ln -sf /etc/shadow {sock_dir}/sync.sock 2>&1; rm -f {sock_dir}/sync.sock 2>&1; echo done")
        assert "Permission denied" in out.stdout and stat.S_ISSOCK(os.lstat(sock_dir / "sync.sock").st_mode)
    finally:
        stop_as(stack, mallory, view)
    stack.wait_status(view["id"], "stopped")
    assert not sock_dir.exists()


def test_a_new_session_never_owns_an_earlier_sessions_files(stack, mallory):
    """Attack 4: userdel keeps files and useradd reused the uid; a stale home of another instance was adopted."""
    first = stack.cli_json("launch", "ssh-session", "--workspace", "~/ws", "--wait")  # the admin's session
    assert openssh(first, "echo admin-private > ~/.private && chmod 600 ~/.private && echo x > /tmp/left-by-first-$(id -u)"
                          " && id -u").returncode == 0
    first_uid = int(openssh(first, "id -u").stdout)
    first_home = HOMES / first["id"]
    stack.cli("sessions", "stop", first["id"])
    stack.wait_status(first["id"], "stopped")
    assert mode_owner(first_home) == (0o700, 0, 0)  # locked: nothing of it is reachable any more
    # A stale home of another berth instance, owned by an id this host has not handed out yet.
    stale_uid = max(p.pw_uid for p in pwd.getpwall() if p.pw_uid < 2**31 - 1) + 1
    stale = HOMES / f"stale-{uuid.uuid4().hex[:8]}"
    stale.mkdir(mode=0o750)
    (stale / "notes").write_text("stale secret\n")
    os.chown(stale, stale_uid, stale_uid)
    os.chown(stale / "notes", stale_uid, stale_uid)
    second = launch_as(stack, mallory, "--workspace", "~/ws")
    try:
        uid = int(openssh(second, "id -u").stdout)
        assert uid not in (first_uid, stale_uid)
        out = openssh(second, f"cat {first_home}/.private {stale}/notes /tmp/left-by-first-{first_uid} 2>&1;"
                              f" find / -xdev -uid {uid} -not -path '{HOMES / second['id']}*' -not -path '/proc/*'"
                              f" -not -path '/run/berth/*' 2>/dev/null | head -5")
        assert "admin-private" not in out.stdout and "stale secret" not in out.stdout
        leftovers = [line for line in out.stdout.splitlines() if line.startswith("/") and "Permission denied" not in line
                     and "No such file" not in line]
        assert leftovers == [], leftovers  # the new user owns nothing outside its own home
    finally:
        stop_as(stack, mallory, second)
        shutil.rmtree(stale, ignore_errors=True)
        subprocess.run(["rm", "-f", f"/tmp/left-by-first-{first_uid}"])


def test_setuid_bits_never_come_back(stack, mallory, tmp_path):
    """Attack 5: a setuid file in a workspace came back setuid-root from a download run as root."""
    source = launch_as(stack, mallory, "--workspace", "~/ws")
    assert openssh(source, "mkdir -p ~/ws && cp /bin/true ~/ws/suid && chmod 4755 ~/ws/suid && chmod 2755 ~/ws"
                           " && stat -c %a ~/ws/suid").stdout.strip() == "4755"
    stop_as(stack, mallory, source)
    stack.wait_status(source["id"], "stopped")
    snap = stack.cli_json("workspaces", "list", "--session", source["id"], env=mallory["env"])[0]
    out = tmp_path / "dl"
    result = stack.cli("workspaces", "download", snap["id"], str(out), env=mallory["env"])
    st = os.lstat(out / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.getuid()  # the downloading user's, no setuid
    assert "setuid/setgid" in result.stderr
    second = launch_as(stack, mallory, "--workspace", "~/ws", "--restore-session", source["id"])
    try:
        assert openssh(second, "stat -c %a ~/ws/suid").stdout.strip() == "755"
        assert any("setuid/setgid bits are never restored" in e for e in stack.events(second["id"]))
    finally:
        stop_as(stack, mallory, second)
