"""SSH into a session's container (berth.agent.ssh.container): OpenSSH sshd from the /berth bundle, run inside a
real Podman container made by the real container backend, reached by real OpenSSH clients (ssh, scp, sftp, rsync).

The image is the test image (scripts/test-image.sh: Debian minbase + python3, no ssh, no scp, no rsync), so every
tool on the server side is berth's own. One container serves the module; the processes must run as the
container's mapped host ids, never as host root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from berth.agent.backends.container import ContainerBackend
from berth.agent.backends.container_cli import USERNS_SIZE
from berth.agent.ssh import SshServerSpec, start_ssh_server
from berth.agent.ssh.bundle import cache_dir_for, ensure_bundle
from berth.agent.ssh.container import MARKER_ENV
from berth.errors import SetupFailed
from berth.ids import new_id
from ssh_clients import PW_OPTS, SSH_OPTS, Login, Loop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENGINE_ARGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@dataclass
class Box(Login):
    backend: ContainerBackend
    server: object
    home: Path
    workspace: Path
    base: int
    logs: list[str]


def _need_podman():
    if os.geteuid() != 0:
        pytest.skip("the container backend runs as root")
    if not shutil.which("podman"):  # scripts/setup.sh installs it: its absence is a broken setup, not a reason to skip
        pytest.fail("podman is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def image():
    _need_podman()
    out = subprocess.run(["bash", str(ROOT / "scripts" / "test-image.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"cannot build the test image: {out.stderr[-2000:]}"
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def loop():
    lp = Loop()
    yield lp
    lp.close()


def _session_dir(root: Path, config: dict) -> tuple[str, Path]:
    sid = new_id()
    session_dir = root / "agent" / "sessions" / sid
    session_dir.mkdir(parents=True)
    os.chmod(session_dir, 0o700)
    agent = {"server": "http://127.0.0.1:9", "backend": "container", "bind_host": "127.0.0.1",
             "container_cli": "podman", "container_run_args": ENGINE_ARGS,
             # a slice of ids no other test run uses at the same time
             "container_subuid_start": 1_000_000_000 + secrets.randbelow(10_000) * USERNS_SIZE * 4,
             "container_subuid_count": USERNS_SIZE * 4}
    (session_dir / "assignment.json").write_text(json.dumps({"agent": agent, "assignment": {"config": config}}))
    return sid, session_dir


@pytest.fixture(scope="module")
def box(image, loop):
    # under /var/tmp with 755: the mapped session user must reach its home (pytest's temp dirs are root's 700)
    root = Path(tempfile.mkdtemp(prefix="berth-container-ssh-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    sid, session_dir = _session_dir(root, {"image": image})
    password = "pw-" + secrets.token_urlsafe(12)
    backend = ContainerBackend(sid, session_dir, homes_dir=root / "homes", runtime_dir=root / "run", password=password)
    host = loop.run(backend.prepare())
    try:
        key = root / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        workspace = host.home / "work"
        wrapper = host.home / ".berth" / "session-shell"
        loop.run(backend.act_as_session("login_files", {
            "home": str(host.home), "workspace": str(workspace), "venv": None, "session_id": sid,
            "wrapper": str(wrapper), "env": {"BERTH_TEST_VAR": "from the session"},
            "authorized_keys": Path(f"{key}.pub").read_text()}))
        kind, options = backend.ssh_server()
        spec = SshServerSpec(kind=kind, run_dir=session_dir / "ssh", home=host.home, user=host.run_as.user,
                             password=password, authorized_keys=[], shell_wrapper=wrapper, bind_host="127.0.0.1",
                             uid=host.run_as.uid, gid=host.run_as.gid, keys_written_by_caller=True, options=options)
        logs: list[str] = []
        server = loop.run(start_ssh_server(spec, logs.append))
        yield Box(port=server.port, user=host.run_as.user, password=password, key=key, backend=backend, server=server,
                  home=host.home, workspace=workspace, base=backend.uid_base, logs=logs)
        loop.run(server.stop())
        assert not server.alive()
    finally:
        try:
            loop.run(backend.teardown(host, exclude_pids=set()))
        except SetupFailed as e:
            # this host's podman 4.3 removes the container yet reports its shm mount busy (held by another
            # container's mount namespace); the container being gone is what counts here (asserted below)
            if "device or resource busy" not in str(e):
                raise
        shutil.rmtree(root, ignore_errors=True)
    gone = subprocess.run(["podman", "container", "exists", backend.container])
    assert gone.returncode == 1, "the container outlived teardown"


def test_bundle_is_cached_and_self_contained(tmp_path):
    a = ensure_bundle(tmp_path / "cache")
    b = ensure_bundle(tmp_path / "cache")
    assert a == b and {"sshd", "sftp-server", "scp", "rsync"} <= set(a.tools) and "dropbear" not in a.tools
    assert (a.path / "lib" / "ld.so").resolve().is_file()
    assert oct((a.path / "libexec" / "sshd").stat().st_mode & 0o777) == "0o755"
    assert a.mounts() == [(str(a.path), "/berth", "ro")]  # nothing of ours over the image's own paths
    assert cache_dir_for(Path("/data/sessions/abc")) == Path("/data/ssh-bundle")
    # git and its https helper come along (cloning in an image without git), each through the bundled loader
    assert {"git", "git-remote-http", "ssh"} <= set(a.tools)
    git_wrapper = (a.path / "bin" / "git").read_text()
    assert "GIT_EXEC_PATH=/berth/git-core" in git_wrapper and "/berth/lib/ld.so" in git_wrapper
    assert "/berth/libexec/git-remote-http" in (a.path / "git-core" / "git-remote-https").read_text()


def test_server_reports_host_key(box):
    assert box.server.kind == "container" and box.server.port
    assert box.server.host_key.startswith("ssh-ed25519 ")
    assert box.server.host_key_fingerprint.startswith("SHA256:")
    assert any("OpenSSH sshd inside container" in line for line in box.logs), box.logs
    assert not any("more than the modern set" in line for line in box.logs), box.logs
    # what the client sees is the key the server reports
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(box.server.port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    assert box.server.host_key.split()[1] in scan.stdout


def test_password_login_lands_in_the_workspace(box):
    out = box.ssh('id -u; id -un; pwd; echo "$BERTH_TEST_VAR"; echo "$BERTH_SESSION_ID"; cat /etc/debian_version').split("\n")
    assert out[0] == "1000" and out[1] == box.user
    assert out[2] == str(box.workspace)
    assert out[3] == "from the session" and out[4] == box.backend.session_id
    wrong = subprocess.run(["sshpass", "-p", "not-the-password", "ssh", *SSH_OPTS, *PW_OPTS, "-p",
                            str(box.server.port), f"{box.user}@127.0.0.1", "true"], capture_output=True, timeout=60)
    assert wrong.returncode != 0


def test_key_login(box):
    assert box.ssh("echo key-ok", password=False).strip() == "key-ok"


def test_pty(box):
    out = box.ssh("tty; echo TERM=$TERM", "-tt")
    assert "/dev/pts/" in out and "not a tty" not in out


def test_processes_run_as_the_mapped_user(box):
    """The login's processes are the container's session user: host uid base+1000, never 0; the shell above each
    sshd (marked: what stop() ends) is container root, host uid base, and everything below it stays in the range."""
    proc = subprocess.Popen([*box.ssh_argv(), "exec sleep 41.5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, found = time.monotonic() + 20, []
        while not found and time.monotonic() < deadline:
            found = [p for p in psutil.process_iter(["cmdline", "uids"]) if p.info["cmdline"] == ["sleep", "41.5"]]
            time.sleep(0.1)
        assert found, "the login's command never ran"
        assert set(found[0].info["uids"]) == {box.base + 1000}
        # marked: the engine's client on the worker (root, starts nothing itself) and the shell above sshd
        shells = [p for p in psutil.process_iter(["uids", "name"]) if _marked(p) and p.info["name"] != "podman"]
        assert shells and all(set(p.info["uids"]) == {box.base} for p in shells)
        below = [c for p in shells for c in p.children(recursive=True)]
        assert found[0].pid in {c.pid for c in below}  # stop() reaches the login's processes through the shell
        assert any(c.name() == "sshd" or "sshd" in " ".join(c.cmdline()) for c in below)
        for c in below:
            assert all(box.base <= u < box.base + USERNS_SIZE for u in c.uids()), (c, c.uids())
    finally:
        proc.kill()
        proc.wait()


def _marked(p: psutil.Process) -> bool:
    try:
        return MARKER_ENV in p.environ()
    except psutil.Error:
        return False


def test_scp_both_ways(box, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(300_000))
    dest = f"{box.user}@127.0.0.1:{box.workspace}/"
    scp = ["sshpass", "-p", box.password, "scp", *SSH_OPTS, *PW_OPTS, "-P", str(box.server.port)]
    for mode, name in ((["-s"], "sftp.bin"), (["-O"], "legacy.bin")):  # SFTP protocol, and the old scp -t
        subprocess.run([*scp, *mode, str(src), dest + name], check=True, capture_output=True, timeout=60)
        on_host = box.workspace / name
        assert on_host.read_bytes() == src.read_bytes()
        assert on_host.stat().st_uid == box.base + 1000  # written by the session user, as the host sees it
        back = tmp_path / f"back-{name}"
        subprocess.run([*scp, *mode, dest + name, str(back)], check=True, capture_output=True, timeout=60)
        assert back.read_bytes() == src.read_bytes()


def test_sftp(box, tmp_path):
    (tmp_path / "s.txt").write_text("over sftp\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 's.txt'} s.txt\nls -l\nget s.txt {tmp_path / 's-back.txt'}\n")
    # sftp -b means BatchMode (no password prompts): the key
    out = subprocess.run(["sftp", *SSH_OPTS, "-i", str(box.key), "-P", str(box.server.port),
                          "-b", str(batch), f"{box.user}@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (box.workspace / "s.txt").read_text() == "over sftp\n"  # relative paths start in the workspace
    assert (tmp_path / "s-back.txt").read_text() == "over sftp\n"


def test_rsync(box, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.txt").write_text("b\n" * 1000)
    out = subprocess.run(["rsync", "-a", "-e", box.ssh_cmd(), f"{tree}/", f"{box.user}@127.0.0.1:{box.workspace}/tree/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (box.workspace / "tree" / "sub" / "b.txt").read_text() == "b\n" * 1000
    back = tmp_path / "back"
    out = subprocess.run(["rsync", "-a", "-e", box.ssh_cmd(), f"{box.user}@127.0.0.1:{box.workspace}/tree/", f"{back}/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (back / "a.txt").read_text() == "a\n"


def test_local_forward_reaches_a_port_inside_the_container(box):
    """-L lands in the container's network namespace: the server there is not on the worker's loopback."""
    (box.workspace / "forward-marker.txt").write_text("inside\n")
    inner, local = 18765, _free_port()
    proc = subprocess.Popen([*box.ssh_argv("-L", f"{local}:127.0.0.1:{inner}"),
                             f"cd {box.workspace} && exec python3 -m http.server {inner} --bind 127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/forward-marker.txt", timeout=3).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert body == "inside\n"
        with pytest.raises(OSError):  # not the worker's own port
            urllib.request.urlopen(f"http://127.0.0.1:{inner}/", timeout=2)
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_without_a_shell_is_named(image, loop, tmp_path):
    """An image without /bin/sh cannot run dropbear's setup: the server says so instead of failing obscurely."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("no-shell\n")
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    name, tag = f"berth-ssh-test-{secrets.token_hex(4)}", f"localhost/berth-noshell:{secrets.token_hex(4)}"
    subprocess.run(["podman", "import", str(tar), tag], check=True, capture_output=True)
    bundle = ensure_bundle(tmp_path / "ssh-bundle")
    try:
        # pid 1 is the bundle's dd reading a stdin that stays open: the image has nothing to run
        subprocess.run(["podman", "run", "--detach", "--interactive", "--runtime", "runc", *ENGINE_ARGS, "--name", name,
                        "--network", "none", "--uidmap", "0:400000:65536", "--gidmap", "0:400000:65536",
                        *[a for h, c, o in bundle.mounts() for a in ("--volume", f"{h}:{c}:{o}")],
                        "--entrypoint", "/berth/lib/ld.so", tag, "--library-path", "/berth/lib",
                        "/berth/libexec/dd", "of=/dev/null", "status=none"], check=True, capture_output=True)
        spec = SshServerSpec(kind="container", run_dir=tmp_path / "ssh", home=tmp_path, user="nobody", password="x",
                             authorized_keys=[], shell_wrapper=Path("/nonexistent"), bind_host="127.0.0.1",
                             keys_written_by_caller=True, options={"container": name, "cli": "podman"})
        with pytest.raises(SetupFailed, match="has no /bin/sh"):
            loop.run(start_ssh_server(spec, lambda _: None))
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)
