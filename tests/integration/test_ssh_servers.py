"""Per-session SSH servers (berth.agent.ssh) against real clients: OpenSSH's ssh + sshpass, and asyncssh.

openssh/dropbear need root (a throwaway system user is created and removed); the builtin server
runs in-process as the current user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import psutil
import pytest

from berth.agent.ssh import SshServer, SshServerSpec, fingerprint, start_ssh_server
from berth.errors import SetupFailed

pytestmark = pytest.mark.integration

IS_ROOT = os.geteuid() == 0
WRAPPER = """#!/bin/bash
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec bash -c "$SSH_ORIGINAL_COMMAND"; else exec bash -l; fi
"""
SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
            "-o", "ConnectTimeout=5"]


@pytest.fixture
def base_dir():
    # under /var/tmp with 755: the login user must be able to traverse to its home and the wrapper
    d = Path("/var/tmp") / f"berth-ssh-test-{secrets.token_hex(4)}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    wrapper = d / "wrapper.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def system_user(base_dir):
    if not IS_ROOT:
        pytest.skip("creating a system user needs root")
    name = f"bt{secrets.token_hex(4)}"
    password = "pw-" + secrets.token_urlsafe(12)
    home = base_dir / "home"
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash",
                    "--user-group", name], check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        home.mkdir(mode=0o755)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield pw, password
    finally:
        uid = pwd.getpwnam(name).pw_uid
        for p in psutil.process_iter(["uids"]):  # nothing of the user may outlive the test
            if p.info["uids"] and p.info["uids"].real == uid:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def client_key():
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key, key.export_public_key("openssh").decode().strip()


async def sh(*argv: str, timeout: float = 15) -> tuple[int, str, str]:
    # async, so the in-process builtin server keeps running while a client talks to it
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def connect(srv: SshServer, user: str, **kw):
    kw.setdefault("known_hosts", ([asyncssh.import_public_key(srv.host_key)], [], []))  # pins the key
    kw.setdefault("client_keys", None)
    return asyncssh.connect("127.0.0.1", srv.port, username=user, agent_path=None, **kw)


async def conn_run(srv: SshServer, user: str, password: str, command: str) -> asyncssh.SSHCompletedProcess:
    async with connect(srv, user, password=password) as conn:
        return await asyncio.wait_for(conn.run(command), 10)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def start(spec: SshServerSpec) -> tuple[SshServer, list[str], float]:
    lines: list[str] = []
    t0 = time.perf_counter()
    srv = await start_ssh_server(spec, lines.append)
    elapsed = time.perf_counter() - t0
    print(f"{spec.kind} start: {elapsed * 1000:.0f} ms")
    return srv, lines, elapsed


@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
async def test_system_servers(kind, base_dir, system_user, client_key):
    pw, password = system_user
    key, pub = client_key
    home = Path(pw.pw_dir)
    spec = SshServerSpec(kind=kind, run_dir=base_dir / "run", home=home, user=pw.pw_name, password=password,
                         authorized_keys=[pub], shell_wrapper=base_dir / "wrapper.sh", uid=pw.pw_uid, gid=pw.pw_gid)
    srv, lines, elapsed = await start(spec)
    try:
        assert srv.kind == kind and srv.alive() and srv.pids
        assert srv.host_key.startswith("ssh-ed25519 ") and srv.host_key_fingerprint == fingerprint(srv.host_key)
        assert any(str(srv.port) in line for line in lines)
        assert not any(password in line for line in lines)
        assert (spec.run_dir.stat().st_mode & 0o777) == 0o700
        ak = home / ".ssh" / "authorized_keys"
        assert ak.stat().st_uid == pw.pw_uid and (ak.stat().st_mode & 0o777) == 0o600
        assert elapsed < (0.5 if kind == "openssh" else 3.0)

        # (a) OpenSSH client, password
        rc, out, err = await sh("sshpass", "-p", password, "ssh", *SSH_OPTS, "-p", str(srv.port),
                                f"{pw.pw_name}@127.0.0.1", "echo $HOME; pwd; id -un")
        assert rc == 0, err
        assert out.split() == [str(home), str(home), pw.pw_name]
        # pty allocation
        rc, out, err = await sh("sshpass", "-p", password, "ssh", "-tt", *SSH_OPTS, "-p", str(srv.port),
                                f"{pw.pw_name}@127.0.0.1", "tty")
        assert rc == 0, err
        assert out.strip().startswith("/dev/pts/")

        # (b) asyncssh, password; exit status; the presented host key is the one we pin
        async with connect(srv, pw.pw_name, password=password) as conn:
            presented = conn.get_server_host_key().export_public_key("openssh").decode().split()
            assert " ".join(presented[:2]) == srv.host_key
            r = await conn.run("echo hello; echo oops >&2; exit 3")
            assert (r.stdout, r.stderr, r.exit_status) == ("hello\n", "oops\n", 3)
            async with conn.start_sftp_client() as sftp:  # goes through the forced command too
                assert await sftp.realpath(".") == str(home)

        # (c) asyncssh, public key
        async with connect(srv, pw.pw_name, client_keys=[key]) as conn:
            r = await conn.run("id -un")
            assert r.stdout.strip() == pw.pw_name

        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(srv, pw.pw_name, password="wrong"):
                pass

        # a daemon that left its session (setsid) and whose session ended; and an open session
        r = await conn_run(srv, pw.pw_name, password, "setsid nohup sleep 65 >/dev/null 2>&1 < /dev/null & echo $!")
        assert r.exit_status == 0
        conn = await connect(srv, pw.pw_name, password=password)
        proc = await conn.create_process("sleep 60 & sleep 61")
        for _ in range(100):
            children = srv.children()
            cmds = [c.cmdline() for c in children if not gone(c.pid)]
            if ["sleep", "61"] in cmds and ["sleep", "65"] in cmds:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"session processes not seen: {cmds}")
        child_pids = [c.pid for c in children]
    finally:
        await srv.stop()
    assert not srv.alive()
    assert not port_open(srv.port)
    assert all(gone(pid) for pid in srv.pids + child_pids)
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == pw.pw_uid and not gone(p.pid)]
    await asyncio.wait_for(proc.wait_closed(), 5)
    conn.close()
    await srv.stop()  # idempotent


async def test_openssh_bad_config_reports_stderr(base_dir, system_user):
    pw, password = system_user
    spec = SshServerSpec(kind="openssh", run_dir=base_dir / "run", home=Path(pw.pw_dir), user=pw.pw_name,
                         password=password, authorized_keys=[], shell_wrapper=base_dir / "wrapper.sh",
                         bind_host="203.0.113.7", port=2222)  # not an address of this machine: bind fails
    with pytest.raises(SetupFailed) as e:
        await start_ssh_server(spec, lambda line: None)
    assert "sshd exited" in e.value.message and "203.0.113.7" in e.value.message  # sshd's own words
    spec.port = None
    with pytest.raises(SetupFailed):
        await start_ssh_server(spec, lambda line: None)


@pytest.fixture
async def builtin(base_dir, client_key):
    me = pwd.getpwuid(os.geteuid())
    home = base_dir / "home"
    home.mkdir()
    password = "pw-" + secrets.token_urlsafe(12)
    spec = SshServerSpec(kind="builtin", run_dir=base_dir / "run", home=home, user=me.pw_name, password=password,
                         authorized_keys=[client_key[1]], shell_wrapper=base_dir / "wrapper.sh",
                         bind_host="127.0.0.1", env={"BERTH_TEST_VAR": "from-spec"})
    srv, lines, elapsed = await start(spec)
    assert elapsed < 0.5
    assert srv.pids == [] and srv.alive()
    assert lines and not any(password in line for line in lines)
    yield srv, spec
    await srv.stop()
    assert not srv.alive() and not port_open(srv.port)


async def test_builtin_exec_and_auth(builtin, client_key):
    srv, spec = builtin
    async with connect(srv, spec.user, password=spec.password) as conn:
        presented = conn.get_server_host_key().export_public_key("openssh").decode().split()
        assert " ".join(presented[:2]) == srv.host_key
        r = await conn.run("echo $HOME; pwd; echo $USER $BERTH_TEST_VAR; echo err >&2; exit 3")
        assert r.exit_status == 3
        assert r.stdout.split("\n")[:3] == [str(spec.home), str(spec.home), f"{spec.user} from-spec"]
        assert r.stderr == "err\n"
        r = await conn.run("cat; echo \"[$SSH_ORIGINAL_COMMAND]\"", input="piped\n")
        assert r.stdout == "piped\n[cat; echo \"[$SSH_ORIGINAL_COMMAND]\"]\n"
        r = await conn.run("kill -TERM $$")
        assert r.exit_signal and r.exit_signal[0] == "TERM"
    async with connect(srv, spec.user, client_keys=[client_key[0]]) as conn:
        assert (await conn.run("true")).exit_status == 0
    for user, password in [(spec.user, "wrong"), ("nobody-else", spec.password)]:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(srv, user, password=password):
                pass


async def test_builtin_pty_shell(builtin):
    srv, spec = builtin
    async with connect(srv, spec.user, password=spec.password) as conn:
        proc = await conn.create_process(term_type="xterm-256color", term_size=(80, 24))
        proc.stdin.write("stty size; echo T=$TERM\n")
        await asyncio.sleep(0.2)
        proc.change_terminal_size(100, 40)  # propagated to the pty
        await asyncio.sleep(0.1)
        proc.stdin.write("stty size; tty; exit 5\n")
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        await proc.wait_closed()
        assert proc.exit_status == 5
        assert "24 80" in out and "40 100" in out and "T=xterm-256color" in out and "/dev/pts/" in out


async def test_builtin_sftp_and_forwarding(builtin):
    srv, spec = builtin
    src = spec.home / "up.txt"
    src.write_text("payload\n")
    async with connect(srv, spec.user, password=spec.password) as conn:
        async with conn.start_sftp_client() as sftp:
            assert await sftp.realpath(".") == str(spec.home)
            await sftp.put(str(src), "copy.txt")
            assert (spec.home / "copy.txt").read_text() == "payload\n"
            await sftp.get(str(spec.home / "copy.txt"), str(spec.home / "back.txt"))
            assert (spec.home / "back.txt").read_text() == "payload\n"

        # direct-tcpip to a local echo server; other destinations are refused
        async def echo(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await conn.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            writer.close()
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("192.0.2.1", 80)


async def test_builtin_openssh_client(builtin):
    srv, spec = builtin
    rc, out, err = await sh("sshpass", "-p", spec.password, "ssh", *SSH_OPTS, "-p", str(srv.port),
                            f"{spec.user}@127.0.0.1", "pwd; exit 7")
    assert rc == 7, err
    assert out.strip() == str(spec.home)
    rc, out, err = await sh("sshpass", "-p", spec.password, "ssh", "-tt", *SSH_OPTS, "-p", str(srv.port),
                            f"{spec.user}@127.0.0.1", "tty")
    assert rc == 0, err
    assert out.strip().startswith("/dev/pts/")


async def test_builtin_stop_kills_sessions(builtin):
    srv, spec = builtin
    conn = await connect(srv, spec.user, password=spec.password)
    t0 = time.perf_counter()
    r = await conn.run("sleep 617 & echo started")  # the job keeps stdout open; the session still ends
    assert (r.stdout, r.exit_status) == ("started\n", 0) and time.perf_counter() - t0 < 3
    proc = await conn.create_process("sleep 611 & sleep 612")
    pty = await conn.create_process(term_type="xterm")
    pty.stdin.write("sleep 613\n")

    def sleepers():
        return [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] in (["sleep", "611"], ["sleep", "612"], ["sleep", "613"], ["sleep", "617"])
                and not gone(p.pid)]

    for _ in range(100):
        mine = sleepers()
        if len(mine) >= 4:
            break
        await asyncio.sleep(0.05)
    assert len(mine) >= 4
    await srv.stop()
    assert all(gone(p.pid) for p in mine)
    await asyncio.wait_for(proc.wait_closed(), 5)
    await asyncio.wait_for(pty.wait_closed(), 5)
    conn.close()


@pytest.mark.parametrize("pty", [False, True])
async def test_builtin_client_disconnect_hangs_up_child(builtin, pty):
    srv, spec = builtin
    flag = spec.home / f"hup-{pty}"
    conn = await connect(srv, spec.user, password=spec.password)
    await conn.create_process(f"trap 'echo hup > {flag}; exit 0' HUP; sleep 618 & wait",
                              term_type="xterm" if pty else None)
    for _ in range(100):
        mine = [p for p in psutil.Process().children(recursive=True) if p.cmdline() == ["sleep", "618"]]
        if mine:
            break
        await asyncio.sleep(0.05)
    assert mine
    conn.close()
    await conn.wait_closed()
    for _ in range(100):
        if flag.exists() and all(gone(p.pid) for p in mine):
            break
        await asyncio.sleep(0.05)
    assert flag.read_text() == "hup\n"  # the shell got SIGHUP, as from sshd
    assert all(gone(p.pid) for p in mine)
