"""The container backend on a Docker worker, for real: the Docker CLI (/usr/local/bin/docker) against a real
engine, Podman's Docker-compatible API (`podman system service` on a private socket, started and stopped here).

That engine maps each container's root onto its own unprivileged range because its containers.conf says
`userns = "auto"` (the Docker CLI's --userns takes only `host`; the service applies its configured default to
every container the API creates), from the `containers` range in /etc/subuid and /etc/subgid that Podman's
auto mode draws on (made here once when missing). A second service without it stands for a Docker daemon
without userns-remap: its container root is host root, and the backend refuses it.

The backend itself is driven here (one container serves the module, the tests run in file order, the last
removes it), and SSH into that container (berth.agent.ssh.container: OpenSSH's `sshd -i` inside, one
`docker exec` per connection, the connection as the CLI's stdin and stdout) is reached by real OpenSSH clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from container_image import AGENT_ENV, IMAGE, ensure_test_image

from berth.agent.backends.container import ContainerBackend
from berth.agent.ssh import SshServerSpec, free_port, start_ssh_server
from berth.agent.ssh.container import MARKER_ENV
from berth.errors import SetupFailed
from berth.ids import new_id
from ssh_clients import Login, Loop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")

DOCKER = "/usr/local/bin/docker"
# Podman's auto user namespaces draw from this owner's /etc/subuid range; below berth's own Podman slices
# (container_subuid_start, 10^9 and up) and above the session users' ids (3*10^6 and up).
POOL_OWNER, POOL_START, POOL_COUNT = "containers", 400_000_000, 65536 * 1000


def _ensure_pool() -> None:
    """A `containers` range for Podman's userns=auto, made once with the shadow tools (which lock the files)."""
    if any(line.startswith(f"{POOL_OWNER}:") for line in Path("/etc/subuid").read_text().splitlines()) and \
            any(line.startswith(f"{POOL_OWNER}:") for line in Path("/etc/subgid").read_text().splitlines()):
        return
    if subprocess.run(["getent", "passwd", POOL_OWNER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POOL_OWNER],
                       check=True, capture_output=True)
    ids = f"{POOL_START}-{POOL_START + POOL_COUNT - 1}"
    subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, POOL_OWNER], check=True,
                   capture_output=True)


class DockerApi:
    """`podman system service` on a private socket: the Docker API the real Docker CLI talks to."""

    def __init__(self, root: Path, *, userns: bool):
        self.root = root
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        env = {"PATH": os.environ["PATH"], "LANG": "C"}
        if userns:
            conf = root / "containers.conf"
            conf.write_text('[containers]\nuserns = "auto:size=65536"\n')
            env["CONTAINERS_CONF"] = str(conf)
        self.log = open(root / "service.log", "ab")
        self.proc = subprocess.Popen(["podman", "system", "service", "--time=0", self.host], env=env,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Podman service did not come up: {(root / 'service.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([DOCKER, "--host", self.host, *args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _need_docker():
    if not Path(DOCKER).exists() or not shutil.which("podman"):  # scripts/setup.sh installs both
        pytest.fail(f"{DOCKER} or podman is missing (scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def docker_api(tmp_path_factory):
    _need_docker()
    ensure_test_image()  # Podman's image store, which the service shares
    _ensure_pool()
    api = DockerApi(tmp_path_factory.mktemp("docker-api"), userns=True)
    yield api
    api.stop()


def _backend(root: Path, docker_host: str) -> ContainerBackend:
    sid = new_id()
    session_dir = root / "agent" / "sessions" / sid
    session_dir.mkdir(parents=True, mode=0o700)
    agent = {"server": "http://127.0.0.1:9", "backend": "container", "bind_host": "127.0.0.1",
             "container_cli": "docker", "container_docker_host": docker_host,
             "container_run_args": json.loads(AGENT_ENV["BERTH_AGENT_CONTAINER_RUN_ARGS"])}
    (session_dir / "assignment.json").write_text(json.dumps({"agent": agent,
                                                             "assignment": {"config": {"image": IMAGE}}}))
    return ContainerBackend(sid, session_dir, homes_dir=root / "homes", runtime_dir=root / "run",
                            password="pw-" + secrets.token_urlsafe(12))


@pytest.fixture(scope="module")
def box(docker_api):
    # under /var/tmp with 755: the mapped session user must reach its home (pytest's temp dirs are root's 700)
    root = Path(tempfile.mkdtemp(prefix="berth-docker-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    backend = _backend(root, docker_api.host)
    host = asyncio.run(backend.prepare())
    yield backend, host
    if docker_api.docker("container", "inspect", backend.container, check=False).returncode == 0:
        asyncio.run(backend.teardown(host, exclude_pids=set()))
    shutil.rmtree(root, ignore_errors=True)


def _main_pid(api: DockerApi, name: str) -> int:
    return int(api.docker("container", "inspect", "--format", "{{.State.Pid}}", name).stdout)


def test_the_mapping_is_read_from_the_running_container(box, docker_api):
    backend, host = box
    main = _main_pid(docker_api, backend.container)
    inside, base, count = Path(f"/proc/{main}/uid_map").read_text().split()[:3]
    assert inside == "0" and int(base) >= 100_000  # container root is an unprivileged host id
    assert Path(f"/proc/{main}/gid_map").read_text().split()[:2] == ["0", base]
    assert backend.uid_base == int(base)
    assert backend.process_scope().uid_ranges == (range(int(base), int(base) + int(count)),)
    assert backend.identity().uid == host.run_as.uid == int(base) + 1000
    assert os.stat(host.home).st_uid == int(base) + 1000  # the home went to the session user once read
    assert "docker" in backend.describe() and f"root → host uid {base}" in backend.describe()


def test_setup_steps_run_as_the_session_user_never_as_host_root(box, docker_api):
    backend, host = box
    status, lines = asyncio.run(backend.run_in_session(["sh", "-c", "id -u; cat"], env={"PATH": "/usr/bin:/bin"},
                                                       cwd=str(host.home), stdin=b"through stdin\n"))
    assert status == 0 and lines == ["1000", "through stdin"]
    sleeper = subprocess.Popen(backend.exec_argv(["sleep", "46.5"]), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        main = _main_pid(docker_api, backend.container)
        pid_ns, base = os.readlink(f"/proc/{main}/ns/pid"), backend.uid_base
        deadline, inside = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            inside = []
            for p in psutil.process_iter(["uids", "cmdline"]):
                try:
                    if os.readlink(f"/proc/{p.pid}/ns/pid") == pid_ns:
                        inside.append(p)
                except OSError:
                    continue
            if any(p.info["cmdline"] == ["sleep", "46.5"] for p in inside):
                break
            time.sleep(0.2)
        asleep = [p for p in inside if p.info["cmdline"] == ["sleep", "46.5"]]
        assert asleep and set(asleep[0].info["uids"]) == {base + 1000}
        for p in inside:
            assert min(p.info["uids"]) >= base and max(p.info["uids"]) < base + 65536, (p.pid, p.info, base)
    finally:
        sleeper.kill()
        sleeper.wait()


@dataclass
class Ssh(Login):
    loop: Loop  # the server runs on it
    server: object
    workspace: Path
    base: int
    logs: list[str]


@pytest.fixture(scope="module")
def ssh(box, tmp_path_factory):
    """The SSH server of the box's session, as a supervisor starts it: login files written as the session user,
    the server kind and options the backend names."""
    backend, host = box
    loop = Loop()
    key = tmp_path_factory.mktemp("client") / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    workspace, wrapper = host.home / "work", host.home / ".berth" / "session-shell"
    loop.run(backend.act_as_session("login_files", {
        "home": str(host.home), "workspace": str(workspace), "venv": None, "session_id": backend.session_id,
        "wrapper": str(wrapper), "env": {"BERTH_TEST_VAR": "from the session"},
        "authorized_keys": Path(f"{key}.pub").read_text()}))
    kind, options = backend.ssh_server()
    assert kind == "container" and options["cli"] == "docker" and options["docker_host"].startswith("unix://")
    spec = SshServerSpec(kind=kind, run_dir=backend.session_dir / "ssh", home=host.home, user=host.run_as.user,
                         password=backend.password, authorized_keys=[], shell_wrapper=wrapper, bind_host="127.0.0.1",
                         uid=host.run_as.uid, gid=host.run_as.gid, keys_written_by_caller=True, options=options)
    logs: list[str] = []
    started = time.monotonic()
    server = loop.run(start_ssh_server(spec, logs.append))
    logs.append(f"started in {time.monotonic() - started:.2f} s")
    yield Ssh(port=server.port, user=host.run_as.user, password=backend.password, key=key, loop=loop,
              server=server, workspace=workspace, base=backend.uid_base, logs=logs)
    loop.run(server.stop())
    assert not server.alive()
    loop.close()


def test_ssh_server_reports_the_host_key_clients_see(ssh):
    assert ssh.server.kind == "container" and ssh.server.host_key.startswith("ssh-ed25519 ")
    assert ssh.server.host_key_fingerprint.startswith("SHA256:")
    assert any("OpenSSH sshd inside container" in line and "docker exec" in line for line in ssh.logs), ssh.logs
    assert not any("more than the modern set" in line for line in ssh.logs), ssh.logs
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(ssh.port), "127.0.0.1"], capture_output=True,
                          text=True, timeout=30)
    assert ssh.server.host_key.split()[1] in scan.stdout


def test_password_login_runs_as_the_session_user_in_the_workspace(ssh, box):
    backend, _ = box
    out = ssh.ssh('id -u; id -un; pwd; echo "$BERTH_TEST_VAR"; echo "$BERTH_SESSION_ID"').split("\n")
    assert out[:5] == ["1000", ssh.user, str(ssh.workspace), "from the session", backend.session_id]
    wrong = subprocess.run([*Login(ssh.port, ssh.user, "not-the-password", ssh.key).ssh_argv(), "true"],
                           capture_output=True, timeout=60)
    assert wrong.returncode != 0


def test_key_login(ssh):
    assert ssh.ssh("echo key-ok", password=False).strip() == "key-ok"


def test_pty(ssh):
    out = ssh.ssh("tty; echo TERM=$TERM", "-tt")
    assert "/dev/pts/" in out and "not a tty" not in out


def test_scp_both_ways(ssh, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(300_000))
    dest = f"{ssh.user}@127.0.0.1:{ssh.workspace}/"
    for mode, name in ((["-s"], "sftp.bin"), (["-O"], "legacy.bin")):  # SFTP protocol, and the old scp -t
        subprocess.run([*ssh.scp_argv(), *mode, str(src), dest + name], check=True, capture_output=True, timeout=60)
        on_host = ssh.workspace / name
        assert on_host.read_bytes() == src.read_bytes()
        assert on_host.stat().st_uid == ssh.base + 1000  # written by the session user, as the host sees it
        back = tmp_path / f"back-{name}"
        subprocess.run([*ssh.scp_argv(), *mode, dest + name, str(back)], check=True, capture_output=True, timeout=60)
        assert back.read_bytes() == src.read_bytes()


def test_sftp(ssh, tmp_path):
    (tmp_path / "s.txt").write_text("over sftp\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 's.txt'} s.txt\nls -l\nget s.txt {tmp_path / 's-back.txt'}\n")
    out = subprocess.run(ssh.sftp_argv(batch), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (ssh.workspace / "s.txt").read_text() == "over sftp\n"  # relative paths start in the workspace
    assert (tmp_path / "s-back.txt").read_text() == "over sftp\n"


def test_rsync(ssh, tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.txt").write_text("b\n" * 1000)
    out = subprocess.run(["rsync", "-a", "-e", ssh.ssh_cmd(), f"{tmp_path / 'tree'}/",
                          f"{ssh.user}@127.0.0.1:{ssh.workspace}/tree/"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (ssh.workspace / "tree" / "sub" / "b.txt").read_text() == "b\n" * 1000


def test_local_forward_reaches_a_port_inside_the_container(ssh):
    (ssh.workspace / "forward-marker.txt").write_text("inside\n")
    inner, local = 18766, free_port("127.0.0.1")
    proc = subprocess.Popen([*ssh.ssh_argv("-L", f"{local}:127.0.0.1:{inner}"),
                             f"exec python3 -m http.server {inner} --bind 127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/forward-marker.txt", timeout=3).read().decode()
            except OSError:
                time.sleep(0.2)
        assert body == "inside\n"
    finally:
        proc.kill()
        proc.wait()


def _login_processes(ssh: Ssh, command: str, tag: str) -> tuple[subprocess.Popen, psutil.Process, list[psutil.Process]]:
    """Start a login running `command` (its argv ends with `tag`); the login's process, and the marked shells
    above the sshds in the container (what stop() ends)."""
    proc = subprocess.Popen([*ssh.ssh_argv(), command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        found = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and p.info["cmdline"][-1] == tag]
        time.sleep(0.1)
    assert found, f"the login's command never ran: {command}"
    shells = [p for p in psutil.process_iter(["name"]) if _marked(p) and p.info["name"] != "docker"]
    return proc, found[0], shells


def _marked(p: psutil.Process) -> bool:
    try:
        return MARKER_ENV in p.environ()
    except psutil.Error:
        return False


def test_a_login_runs_as_the_mapped_session_user_never_host_root(ssh):
    proc, sleeper, shells = _login_processes(ssh, "exec sleep 43.5", "43.5")
    try:
        assert set(sleeper.uids()) == {ssh.base + 1000}
        assert shells and all(set(p.uids()) == {ssh.base} for p in shells)  # container root
        below = [c for p in shells for c in p.children(recursive=True)]
        assert sleeper.pid in {c.pid for c in below}
        for c in below:  # sshd, its privilege separation child, the login: all in the container's range
            assert all(ssh.base <= u < ssh.base + 65536 for u in c.uids()), (c, c.uids())
    finally:
        proc.kill()
        proc.wait()


def test_stop_ends_the_open_logins_and_their_processes(ssh):
    """The last SSH test: the server stops with a login open; its processes (a background job too) end, and the
    port no longer answers."""
    proc, sleeper, _ = _login_processes(ssh, "sleep 44.5 & exec sleep 45.5", "45.5")
    try:
        background = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "44.5"]]
        assert background
        ssh.loop.run(ssh.server.stop())
        assert not ssh.server.alive()
        _, alive = psutil.wait_procs([sleeper, *background], timeout=10)
        assert not alive, alive
        assert proc.wait(20) != 0  # the client saw its connection end
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", ssh.port), timeout=3):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_teardown_removes_the_container_and_locks_the_home(box, docker_api):
    backend, host = box
    asyncio.run(backend.teardown(host, exclude_pids=set()))
    assert docker_api.docker("ps", "--all", "--filter", f"label=berth.session={backend.session_id}", "--format",
                             "{{.Names}}").stdout.strip() == ""
    assert os.stat(host.home).st_uid == 0


def test_an_engine_whose_container_root_is_host_root_is_refused(docker_api, tmp_path_factory):
    """No user namespace (a Docker daemon without userns-remap): prepare() fails saying so, and the container it
    started is removed; nothing ran as the session."""
    bare = DockerApi(tmp_path_factory.mktemp("docker-api-bare"), userns=False)
    root = Path(tempfile.mkdtemp(prefix="berth-docker-bare-", dir="/var/tmp"))
    try:
        backend = _backend(root, bare.host)
        sid = backend.session_id
        with pytest.raises(SetupFailed) as failed:
            asyncio.run(backend.prepare())
        assert "root is the host's root" in str(failed.value)
        assert bare.docker("ps", "--all", "--filter", f"label=berth.session={sid}", "--format",
                           "{{.Names}}").stdout.strip() == ""
        home = root / "homes" / "containers" / sid
        assert os.stat(home).st_uid == 0  # never handed to anyone
    finally:
        bare.stop()
        shutil.rmtree(root, ignore_errors=True)
