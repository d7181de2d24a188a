"""The SSH Session app end to end: real server, real agent, real sshd/dropbear, real clients."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import asyncssh
import httpx
import paramiko
import pytest

from conftest import session_processes

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def openssh(view: dict, command: str, tty: bool = False) -> subprocess.CompletedProcess:
    ssh = view["ssh"]
    argv = ["sshpass", "-p", ssh["password"], "ssh", *SSH_OPTS, *(["-tt"] if tty else []), "-p", str(ssh["port"]),
            f"{ssh['user']}@{ssh['host']}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def launch(stack, *args: str) -> dict:
    return stack.cli_json("launch", "ssh-session", "--wait", *args)


@pytest.fixture(scope="module")
def active(stack):
    view = launch(stack, "--name", "main", "--tags", "a,b", "--workspace", "~/ws")
    yield view
    stack.cli("sessions", "stop", view["id"], check=False)


def test_launch_json_has_the_public_fields(active):
    for key in ("id", "app", "name", "project", "tags", "queue", "status", "idle_seconds", "restored_from", "worker", "error",
                "config", "ssh", "links"):
        assert key in active
    assert active["status"] == "active"
    assert active["app"] == "ssh-session"
    assert active["project"] == "Interactive Session"
    assert active["tags"] == ["a", "b"]
    ssh = active["ssh"]
    assert set(ssh) >= {"host", "port", "user", "password", "command"}
    assert ssh["command"] == f"ssh -p {ssh['port']} {ssh['user']}@{ssh['host']}"
    assert len(ssh["password"]) >= 22  # >= 128 bits of randomness
    assert ssh["host_key_fingerprint"].startswith("SHA256:")


def test_show_matches_launch(stack, active):
    shown = stack.cli_json("sessions", "show", active["id"])
    assert shown["ssh"] == active["ssh"]
    assert shown["id"] == active["id"]
    assert "links" in shown and shown["links"] is None  # SPEC §5: links are the remote desktop's endpoints


def test_ssh_password_is_sealed_in_the_database(stack, active):
    (stored,), = stack.sql(f"SELECT endpoints FROM sessions WHERE id = '{active['id']}'")
    stored = stored if isinstance(stored, str) else json.dumps(stored)
    assert active["ssh"]["password"] not in stored
    assert "sealed:v1:" in stored and '"ssh"' in stored  # the app's endpoints, its SSH password sealed
    key_file = stack.tmp / "data" / "secret.key"
    assert key_file.stat().st_mode & 0o077 == 0, "the generated key is private to the server's user"


def test_openssh_login_lands_in_workspace_with_venv(active):
    result = openssh(active, "pwd; which python; echo $BERTH_SESSION_ID; id -un")
    assert result.returncode == 0, result.stderr
    pwd_, python, sid, user = result.stdout.split()
    assert pwd_.endswith(f"/{active['id']}/ws")
    assert python.endswith("/.venv/bin/python")
    assert sid == active["id"]
    assert user == active["ssh"]["user"]


def test_openssh_pty_login_shell(active):
    result = openssh(active, "tty; pwd", tty=True)
    assert "/dev/pts/" in result.stdout
    assert f"/{active['id']}/ws" in result.stdout


async def test_asyncssh_client_login_and_host_key_pin(active):
    ssh = active["ssh"]
    async with asyncssh.connect(ssh["host"], port=ssh["port"], username=ssh["user"], password=ssh["password"],
                                known_hosts=None) as conn:
        assert conn.get_server_host_key().export_public_key().decode().split()[1] == ssh["host_key"].split()[1]
        result = await conn.run("cd /; pwd; python -c 'import sys; print(sys.prefix)'", check=True)
        assert result.stdout.split()[1].endswith("/.venv")


async def test_asyncssh_interactive_shell(active):
    ssh = active["ssh"]
    async with asyncssh.connect(ssh["host"], port=ssh["port"], username=ssh["user"], password=ssh["password"],
                                known_hosts=None) as conn:
        async with conn.create_process(term_type="xterm", term_size=(120, 40)) as proc:
            proc.stdin.write("echo marker-$((6*7)); pwd; exit\n")
            output = await proc.stdout.read()
    assert "marker-42" in output
    assert "/ws" in output


def test_berth_ssh_runs_command_with_pinned_host_key(stack, active):
    result = stack.cli("ssh", active["id"], "--", "echo", "hello-from-berth-ssh")
    assert result.stdout.strip() == "hello-from-berth-ssh"


def test_wrong_ssh_password_is_refused(active):
    view = dict(active, ssh=dict(active["ssh"], password="not-the-password"))
    assert openssh(view, "true").returncode != 0


def test_console_tells_the_setup_story_in_order(stack, active):
    events = stack.events(active["id"])
    statuses = [e for e in events if e.startswith("status:")]
    assert statuses[:3] == [statuses[0], statuses[1], "status: active"]
    assert statuses[0].startswith("status: queued") and statuses[1].startswith("status: starting")
    assert events.index("status: active") > max(i for i, e in enumerate(events) if e.startswith("ssh: ready"))
    assert not any(active["ssh"]["password"] in e for e in events)
    logs = stack.cli("sessions", "logs", active["id"]).stdout
    assert "ssh: ready" in logs and active["ssh"]["password"] not in logs


def test_list_shows_the_session(stack, active):
    listed = stack.cli_json("sessions", "list")
    assert active["id"] in [s["id"] for s in listed]


def test_dropbear_session(stack):
    view = launch(stack, "--dropbear")
    try:
        assert view["ssh"]["server"] == "dropbear"
        result = openssh(view, "pwd; which python")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0].endswith("/workspace")
        assert openssh(view, "tty", tty=True).stdout.strip().startswith("/dev/pts/")
        assert paramiko_run(view, "echo in") == "in\n"
        weaker = [e for e in stack.events(view["id"]) if "weaker than OpenSSH" in e]
        assert len(weaker) == 1 and weaker[0].startswith("ssh: dropbear offers"), stack.events(view["id"])
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_stop_leaves_nothing_running_and_keeps_workspace(stack):
    view = launch(stack)
    sid = view["id"]
    # Leave something running in the background, detached from the login, as users do.
    assert openssh(view, "echo kept > note.txt; (setsid sleep 300 >/dev/null 2>&1 &); nohup sleep 301 >/dev/null 2>&1 &").returncode == 0
    assert session_processes(sid), "the session's processes should be visible before stop"
    stopped = stack.cli_json("sessions", "stop", sid)
    assert stopped["status"] == "stopped"
    assert stopped["ssh"] is None
    deadline = time.monotonic() + 5
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(sid) == []
    assert subprocess.run(["id", f"berth-{sid}"], capture_output=True).returncode != 0, "per-session user removed"
    homes = [e for e in stack.events(sid) if e.startswith("setup: session user")][0]
    home = homes.split("home ")[1]
    with open(f"{home}/workspace/note.txt") as f:
        assert f.read() == "kept\n"
    assert openssh(view, "true").returncode != 0


def test_logs_follow_streams_until_the_session_ends(stack):
    view = launch(stack)
    follower = subprocess.Popen([*stack.cli_cmd("sessions", "logs", view["id"], "--follow")], env=stack.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    stack.cli("sessions", "stop", view["id"])
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert "status: stopping" in out and "status: stopped" in out


def test_export_import_round_trip_and_clone(stack, tmp_path):
    view = launch(stack, "--name", "exp", "--tags", "x", "--max-idle-hours", "0.5", "--idle-cpu", "20", "--packages", "")
    try:
        exported = json.loads(stack.cli("sessions", "export", view["id"]).stdout)
        assert exported["berth_config"] == 1 and exported["app"] == "ssh-session"
        assert exported["config"]["max_idle_hours"] == 0.5 and exported["config"]["idle_cpu"] == 20
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(exported))
        second = stack.cli_json("launch", "ssh-session", "--config", str(path))
        assert second["config"] == exported["config"]
        again = json.loads(stack.cli("sessions", "export", second["id"]).stdout)
        assert again == exported
        stack.cli("sessions", "stop", second["id"])
        clone = stack.cli_json("sessions", "clone", view["id"], "--name", "copy")
        assert clone["config"]["restore_session"] == view["id"]
        assert clone["name"] == "copy"
        assert {k: v for k, v in clone["config"].items() if k not in ("restore_session", "name")} == \
               {k: v for k, v in exported["config"].items() if k not in ("restore_session", "name")}
        stack.cli("sessions", "stop", clone["id"])
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_flags_override_config_file(stack, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"berth_config": 1, "app": "ssh-session", "config": {"name": "from-file", "idle_cpu": 5}}))
    view = stack.cli_json("launch", "ssh-session", "--config", str(path), "--name", "from-flag")
    stack.cli("sessions", "stop", view["id"])
    assert view["name"] == "from-flag" and view["config"]["idle_cpu"] == 5


def test_login_registers_a_key_that_sessions_accept(stack, active):
    key = stack.home / ".config" / "berth" / "id_ed25519"
    assert key.exists()
    ssh = active["ssh"]
    result = subprocess.run(["ssh", *SSH_OPTS, "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", "-i", str(key),
                             "-p", str(ssh["port"]), f"{ssh['user']}@{ssh['host']}", "echo key-ok"], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "key-ok", result.stderr


def test_ssh_config_writes_host_entries_usable_by_openssh(stack, active):
    config = stack.home / ".ssh" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text("Host mine\n    HostName example.invalid\n")
    stack.cli("ssh-config")
    stack.cli("ssh-config")  # idempotent: one managed block
    text = config.read_text()
    assert text.startswith("Host mine") and text.count("# >>> berth sessions") == 1
    assert "Host berth-main" in text
    result = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "berth-main", "pwd"], capture_output=True,
                            text=True, timeout=30, env=stack.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("/ws")


def paramiko_run(view: dict, command: str) -> str:
    ssh = view["ssh"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(ssh["host"], port=ssh["port"], username=ssh["user"], password=ssh["password"],
                       allow_agent=False, look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10)
        _, stdout, _ = client.exec_command(command, timeout=20)
        return stdout.read().decode()
    finally:
        client.close()


def test_paramiko_client_login(active):
    assert paramiko_run(active, "pwd").strip().endswith("/ws")


@pytest.mark.parametrize("weak", [["-o", "KexAlgorithms=ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521"],
                                  ["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1,umac-64@openssh.com"]])
def test_session_refuses_weak_algorithms(active, weak):
    ssh = active["ssh"]
    argv = ["sshpass", "-p", ssh["password"], "ssh", "-o", "LogLevel=INFO", *SSH_OPTS, *weak, "-p", str(ssh["port"]),
            f"{ssh['user']}@{ssh['host']}", "true"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255 and "no matching" in result.stderr, result.stderr


# --- copying files in and out: rsync, scp, sftp, as a user who is not an admin ---------------------

def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: (kind, permission bits, content or link target, mtime in seconds)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[str(path.relative_to(root))] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[str(path.relative_to(root))] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), int(st.st_mtime))
    return out


@pytest.fixture(scope="module")
def user_session(stack):
    """A session of a user who is not an admin, in a project of their own."""
    stack.api("POST", "/api/v1/users", json={"username": "rsync-user", "password": "rsync-user-password"})
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": "rsync-user", "password": "rsync-user-password"})
    r.raise_for_status()
    token = r.json()["token"]
    view = stack.api("POST", "/api/v1/sessions", token=token, json={"app": "ssh-session", "config": {"project": "copies"}})
    deadline = time.monotonic() + 90
    while view["status"] not in ("active", "idle", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        view = stack.api("GET", f"/api/v1/sessions/{view['id']}", token=token)
    assert view["status"] == "active", stack.events(view["id"])
    yield view
    stack.api("POST", f"/api/v1/sessions/{view['id']}/stop", token=token)


def test_rsync_round_trip_into_a_session(user_session, tmp_path):
    ssh = user_session["ssh"]
    src, back = tmp_path / "src", tmp_path / "back"
    (src / "bin").mkdir(parents=True)
    (src / "private").mkdir(mode=0o700)
    (src / "plain.txt").write_text("plain\n")
    (src / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "private" / "secret.key").write_text("not really\n")
    (src / "with space é.txt").write_text("spaces\n")
    (src / "data.bin").write_bytes(os.urandom(300_000))
    (src / "link").symlink_to("plain.txt")
    for name, mode in [("bin/run.sh", 0o755), ("private/secret.key", 0o600), ("with space é.txt", 0o640),
                       ("plain.txt", 0o644), ("data.bin", 0o644), ("private", 0o700), ("bin", 0o755)]:
        os.chmod(src / name, mode)
        os.utime(src / name, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    rsh = " ".join(["sshpass", "-e", "ssh", *SSH_OPTS, "-p", str(ssh["port"])])
    env = dict(os.environ, SSHPASS=ssh["password"])
    remote = f"{ssh['user']}@{ssh['host']}:copy/"  # relative: the login starts in the workspace

    def rsync(*args: str) -> None:
        result = subprocess.run(["rsync", "-a", "-e", rsh, *args], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr

    rsync(f"{src}/", remote)
    listing = openssh(user_session, "cd copy && stat -c '%a %U %n' bin/run.sh private/secret.key && sha256sum data.bin")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[:2] == [f"755 {ssh['user']} bin/run.sh", f"600 {ssh['user']} private/secret.key"]
    assert lines[2].split()[0] == subprocess.run(["sha256sum", str(src / "data.bin")], capture_output=True, text=True).stdout.split()[0]
    rsync(remote, f"{back}/")
    assert tree(back) == tree(src)


def test_scp_and_sftp_into_a_session(user_session, tmp_path):
    ssh = user_session["ssh"]
    env = dict(os.environ, SSHPASS=ssh["password"])
    up = tmp_path / "up.bin"
    up.write_bytes(os.urandom(100_000))
    target = f"{ssh['user']}@{ssh['host']}"
    for legacy in ([], ["-O"]):  # scp over SFTP (the default since OpenSSH 9.0) and the old scp protocol
        name = f"scp{len(legacy)}.bin"
        for args in ([str(up), f"{target}:{name}"], [f"{target}:{name}", str(tmp_path / name)]):
            result = subprocess.run(["sshpass", "-e", "scp", *legacy, *SSH_OPTS, "-P", str(ssh["port"]), *args],
                                    capture_output=True, text=True, timeout=60, env=env)
            assert result.returncode == 0, result.stderr
        assert (tmp_path / name).read_bytes() == up.read_bytes()
    batch = tmp_path / "batch"
    batch.write_text(f"put {up} sftp.bin\nget sftp.bin {tmp_path / 'sftp-back.bin'}\nls\n")
    # -b turns BatchMode on, which refuses passwords; an earlier -o wins
    result = subprocess.run(["sshpass", "-e", "sftp", *SSH_OPTS, "-o", "BatchMode=no", "-P", str(ssh["port"]),
                             "-b", str(batch), target],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sftp-back.bin").read_bytes() == up.read_bytes()
    assert "scp0.bin" in result.stdout and "scp1.bin" in result.stdout
