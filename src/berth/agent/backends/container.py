"""The `container` backend: each session runs in its own container of the image it names (Podman or Docker).

One container per session, ``berth-<session id>``, labelled ``berth.session=<id>``, made in ``prepare()`` and
removed at teardown. Root inside is never root outside: with Podman each container gets its own slice of
65536 host ids (``container_subuid_start``/``_count`` settings, never reused, high-water mark in the homes
dir); with Docker the daemon's own mapping. Either way the mapping is read from the running container and one
whose root is the host's is removed and refused (``container_userns.py``). The session user is
uid/gid 1000 inside (passwd, group and shadow entries written as container root with nothing but ``sh``),
host id ``<base>+1000``: ``identity()`` is that id, so restore, snapshot and login files act as the user the
container sees. Its home (``<homes_dir>/containers/<id>``: kept apart, so process-backend sessions never pick
ids from its owners) and its socket dir are bind-mounted at the same paths, so paths agree inside and out.

The container's main process is a shell that only stays up (and reaps orphans: pid 1's job); everything else
enters through ``<cli> exec`` (``run_in_session``; the SSH server does the same per connection). The image needs
nothing of berth's but ``/bin/sh``. ``down_reason()`` watches that main process: a container that dies fails the
session with its exit status and its last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from berth.agent.as_session import Identity
from berth.agent.context import SupervisorContext
from berth.agent.netns import namespace_counters
from berth.agent.processes import kill_scope
from berth.agent.proctable import Scope
from berth.agent.run_as import RunAs
from berth.agent.session_files import ASSIGNMENT_FILE
from berth.agent.session_users import lock_home
from berth.agent.setup.commands import run_command
from berth.apps import config_model, container_args
from berth.errors import SetupFailed

from .base import SessionBackend, SessionHost, make_socket_dir

log = logging.getLogger("berth.agent.container")
from .container_bundle import ssh_bundle
from .container_cli import USERNS_SIZE, ContainerCli, RunSpec, container_name
from .container_runtime import RuntimeChoice, choose_runtime, find_sysbox
from .container_user import BOOT_DIR, READY, entry_args, exec_script, main_command, write_boot_dir
from .container_userns import read_userns
from .process import session_user_name

BUNDLE_BIN = "/berth/bin"  # berth.agent.ssh.bundle.BIN (not imported: that module is loaded only when needed)
SESSION_UID = 1000          # the session user's uid and gid inside the container
STATE_FILE = "container.json"  # in the session dir: what teardown after a dead supervisor needs
_SLICES = ".berth-container-slices"
# The engine runs as root with this environment only: the session's HOME or XDG dirs would make it read
# configuration the session user wrote.
_ENGINE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
def read_context(session_dir: Path) -> SupervisorContext:
    """The agent's settings for this session (assignment.json), as the supervisor reads them."""
    data = json.loads((session_dir / ASSIGNMENT_FILE).read_text())
    return SupervisorContext.model_validate(data["agent"])


def allocate_slice(state_dir: Path, start: int, count: int) -> int:
    """The first host id of a fresh slice of USERNS_SIZE ids in [start, start + count): never handed out before."""
    _check_range(start, count)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / _SLICES, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # concurrent supervisors
        try:
            used = json.loads(f.read() or "{}")
        except ValueError:
            used = {}
        base = max(start, int(used.get("next", 0)))  # a moved start never goes back over handed-out ids
        if base + USERNS_SIZE > start + count:
            raise SetupFailed(f"the container user-namespace range {start}+{count} is used up (every session gets "
                              "ids never used before): move BERTH_AGENT_CONTAINER_SUBUID_START past "
                              f"{base} or widen BERTH_AGENT_CONTAINER_SUBUID_COUNT")
        f.seek(0)
        f.truncate()
        json.dump({"next": base + USERNS_SIZE}, f)
        f.flush()
        os.fsync(f.fileno())
    return base


def _check_range(start: int, count: int) -> None:
    if start + count > 2**32 - 2:
        raise SetupFailed("BERTH_AGENT_CONTAINER_SUBUID_START + _COUNT go past the largest user id (2^32 - 2)")
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                owner, _, rest = line.partition(":")
                first, _, n = rest.partition(":")
                if first.isdigit() and n.isdigit() and int(first) < start + count and start < int(first) + int(n):
                    raise SetupFailed(f"the container user-namespace range {start}+{count} overlaps {owner}'s "
                                      f"range in {path}: set BERTH_AGENT_CONTAINER_SUBUID_START elsewhere")


class ContainerBackend(SessionBackend):
    name = "container"

    def __init__(self, session_id: str, session_dir: Path, **kw):
        super().__init__(session_id, session_dir, **kw)
        self.container = container_name(session_id)
        self._cli: ContainerCli | None = None
        self._base: int | None = None
        self._size = USERNS_SIZE  # ids mapped from _base on (the engine's own mapping may differ: Docker)
        self._main: psutil.Process | None = None
        self._down: str | None = None
        data = json.loads((session_dir / ASSIGNMENT_FILE).read_text())
        self.ctx = SupervisorContext.model_validate(data["agent"])
        config = data["assignment"]["config"]
        self.image: str | None = config.get("image") or self.ctx.container_image  # the worker's for those naming none
        app = data["assignment"].get("app")  # a desktop gets the VM-like runtime (container_runtime.py)
        self.vm_like = bool(app) and config_model(app).vm_like
        self._runtime: RuntimeChoice | None = None
        self.user_args = container_args.split(config.get("container_args") or "")

    # --- the plan: engine and id range (also what describe() shows before prepare) -----------------------
    @property
    def cli(self) -> ContainerCli:
        if self._cli is None:
            self._cli = ContainerCli.choose(self.ctx.container_cli, docker_host=self.ctx.container_docker_host)
        return self._cli

    @property
    def uid_base(self) -> int:
        """Podman: the slice berth picks before the container runs. Docker: the daemon's, read once it runs."""
        if self._base is None:
            if self.cli.kind == "docker":
                raise SetupFailed("the Docker engine's user namespace is known once the container runs")
            else:
                self._base = allocate_slice(self.homes_dir / "containers", self.ctx.container_subuid_start,
                                            self.ctx.container_subuid_count)
        return self._base

    @property
    def session_uid(self) -> int:
        return self.uid_base + SESSION_UID

    @property
    def runtime(self) -> RuntimeChoice:
        """The OCI runtime: VM-like sessions (desktops) get Sysbox where the worker has it (container_runtime.py)."""
        if self._runtime is None:
            sysbox = find_sysbox(self.cli, _ENGINE_ENV) if self.vm_like else None
            self._runtime = choose_runtime(configured=self.ctx.container_runtime, vm_like=self.vm_like, sysbox=sysbox,
                                           desktop=self.ctx.container_desktop_runtime)
        return self._runtime

    def describe(self) -> str:
        try:
            cli, runtime = self.cli, self.runtime
            base = self.uid_base if cli.kind == "podman" or self._base is not None else None
        except SetupFailed:  # prepare() says why
            return f"container backend: image {self.image}"
        userns = ("user namespace: the daemon's, checked once the container runs" if base is None else
                  f"user namespace: root → host uid {base}, session user → {base + SESSION_UID}")
        return f"container {self.image} ({cli.kind}, {userns}); {runtime.isolation}"

    def programs_from(self) -> str:
        return f"the image {self.image}"

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def prepare(self) -> SessionHost:
        if not self.image:
            raise SetupFailed("this worker runs sessions in containers, the session names no image and the worker "
                              "has none for such sessions: launch it with an image (--image), or set "
                              "BERTH_AGENT_CONTAINER_IMAGE on the worker")
        cli = self.cli
        (status, _), bundle = await asyncio.gather(self._engine(cli.image_exists_argv(self.image)),
                                                   asyncio.to_thread(ssh_bundle, self.session_dir, cli, _sync_engine))
        if status:
            raise SetupFailed(f"image {self.image!r} is not on this worker ({cli.kind} images); pull or build it there")
        planned = self.uid_base if cli.kind == "podman" else None  # Docker: the daemon's, read once it runs
        home = self._make_home(planned + SESSION_UID if planned is not None else 0)  # root's until then
        socket_dir = make_socket_dir(self.runtime_dir / self.session_id,
                                     planned + SESSION_UID if planned is not None else None)
        _write_state(self.session_dir, {"cli": cli.kind, "base": planned, "home": str(home)})
        user = session_user_name(self.session_id)
        entries, password_hash = entry_args(user, SESSION_UID, home), await _password_hash(self.password)
        mounts = [(str(home), str(home), ""), (str(socket_dir), str(socket_dir), ""), *bundle.mounts()]
        boot = self.session_dir / "boot"
        if planned is not None:  # Podman: pid 1 writes the user's entries at boot (container_user.py)
            shutil.rmtree(boot, ignore_errors=True)
            write_boot_dir(boot, password_hash, planned)
            mounts.append((str(boot), BOOT_DIR, "ro"))
        spec = RunSpec(
            name=self.container, session_id=self.session_id, image=self.image,
            command=main_command(entries if planned is not None else None), uid_base=planned, mounts=mounts,
            runtime=self.runtime.runtime, cpus=self.ctx.container_cpus, memory=self.ctx.container_memory,
            network=self.ctx.container_network, gpus=_has_gpus(), hostname=f"berth-{self.session_id[:12]}",
            engine_args=list(self.ctx.container_run_args), user_args=self.user_args)
        try:
            status, tail = await self._engine(cli.run_argv(spec))
            if status:
                raise SetupFailed(f"could not start a container of {self.image}: " + "\n".join(tail[-8:]))
            status, tail = await self._engine(cli.inspect_argv(self.container, "{{.State.Pid}}"))
            with contextlib.suppress(ValueError, psutil.Error):
                self._main = psutil.Process(int(tail[-1]))
            if self._main is None:
                raise SetupFailed(f"the container of {self.image} did not stay up: {await self._exit_story()}")
            await self._check_userns(planned, home, socket_dir)
            if planned is not None:
                await self._user_written_at_boot()
            else:
                await self._add_user(entries, password_hash)
        finally:
            shutil.rmtree(boot, ignore_errors=True)  # the hash: needed only until pid 1 read it
        uid = self.session_uid
        self.host = SessionHost(run_as=RunAs(user, uid, uid, home), home=home, system_user=False,
                                socket_dir=socket_dir, socket_gid=uid, setup_dir=socket_dir, worker_files=False)
        return self.host

    async def _user_written_at_boot(self, timeout_s: float = 30.0) -> None:
        """Wait for pid 1's READY mark (seen through /proc/<pid>/root: the container's own file system)."""
        ready = Path(f"/proc/{self._main.pid}/root{READY}")
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if not _alive(self._main):
                raise SetupFailed(f"could not add the session user inside the container ({self.image} needs "
                                  f"/bin/sh): {await self._exit_story()}")
            if time.monotonic() > deadline:
                raise SetupFailed(f"the container of {self.image} did not write the session user's entries within "
                                  f"{timeout_s:g} s")
            await asyncio.sleep(0.01)

    async def _check_userns(self, planned: int | None, home: Path, socket_dir: Path) -> None:
        """The mapping the container really got (container_userns.py); refused: the container is removed at once.
        Then the home and the socket dir go to the session user's host id."""
        try:
            base, size = await asyncio.to_thread(read_userns, self._main.pid, session_id=SESSION_UID, planned=planned,
                                                 homes=home.parent, own_home=home)
        except SetupFailed:
            await self._remove_container()
            raise
        self._base, self._size = base, size
        uid = base + SESSION_UID
        os.chown(home, uid, uid, follow_symlinks=False)
        make_socket_dir(socket_dir, uid)
        _write_state(self.session_dir, {"cli": self.cli.kind, "base": base, "size": size, "home": str(home)})

    def _make_home(self, uid: int) -> Path:
        parent = self.homes_dir / "containers"
        parent.mkdir(parents=True, exist_ok=True)
        for path in (self.homes_dir, parent):
            os.chmod(path, 0o755)  # traversed by the mapped users (act_as_session runs as them on the host)
        home = parent / self.session_id
        try:
            os.mkdir(home, 0o750)
        except FileExistsError:
            st = os.lstat(home)
            if st.st_uid != uid or not home.is_dir() or home.is_symlink():
                raise SetupFailed(f"refusing to adopt {home}: it exists already (a stale home of another session)") from None
        os.chown(home, uid, uid, follow_symlinks=False)
        os.chmod(home, 0o750, follow_symlinks=False)
        return home

    async def _add_user(self, entries: list[str], password_hash: str) -> None:
        """The entries by exec (Docker: the mapping was checked first), the hash on stdin."""
        argv = self.cli.exec_argv(self.container, exec_script(entries), user="0:0", interactive=True)
        status, tail = await self._engine(argv, stdin=f"{password_hash}\n".encode())
        if status:
            raise SetupFailed(f"could not add the session user inside the container ({self.image} needs /bin/sh): "
                              + "\n".join(tail[-5:]))

    def identity(self) -> Identity:
        if self.host is None:
            raise RuntimeError("identity() before prepare()")
        return Identity(self.session_uid, self.session_uid)

    def ssh_server(self) -> tuple[str, dict[str, str]]:
        """OpenSSH sshd inside the container (berth.agent.ssh.container), from the bundle mounted at /berth."""
        options = {"container": self.container, "cli": self.cli.kind}
        if self.cli.host:
            options["docker_host"] = self.cli.host
        return "container", options

    def fd_in_session(self, fd: int, pass_fds: tuple[int, ...]) -> int:
        return 3 + pass_fds.index(fd)  # `exec --preserve-fds N` passes fds 3 .. 3+N-1

    def exec_argv(self, argv: list[str], *, root: bool = False, cwd: str | None = None, env_file: str | None = None,
                  env_names: list[str] = (), interactive: bool = False, preserve_fds: int = 0) -> list[str]:
        """The engine's argv running `argv` in the session's container, as the session user (or container root)."""
        user = "0:0" if root else f"{SESSION_UID}:{SESSION_UID}"
        return self.cli.exec_argv(self.container, argv, user=user, cwd=cwd, env_file=env_file, env_names=env_names,
                                  interactive=interactive, preserve_fds=preserve_fds)

    async def run_in_session(self, argv: list[str], *, env: dict[str, str], cwd: str | Path,
                             stdin: bytes | None = None, on_line: Callable[[str], None] | None = None,
                             pass_fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
        """`argv` through `<cli> exec`. Values go in a private env file (never argv); those with a newline,
        which an env file cannot hold, by name from the engine's own environment. A passed fd the command
        names as /proc/self/fd/N is renumbered from 3 up, the numbers `exec --preserve-fds` passes."""
        if self.host is None:
            raise RuntimeError("run_in_session() before prepare()")
        if "PATH" in env:  # berth's tools (git, ssh, rsync, ...) last: an image without them still runs setup
            env = {**env, "PATH": f"{env['PATH']}:{BUNDLE_BIN}"}
        engine_env = dict(_ENGINE_ENV)
        multiline = {k: v for k, v in env.items() if "\n" in v or "\r" in v}
        engine_env.update(multiline)
        renumber = {f"/proc/self/fd/{fd}": f"/proc/self/fd/{self.fd_in_session(fd, pass_fds)}" for fd in pass_fds}
        argv = [renumber.get(a, a) for a in argv]
        fd, env_file = tempfile.mkstemp(prefix="exec-env-", dir=self.session_dir)  # the agent's private dir
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{k}={v}\n" for k, v in env.items() if k not in multiline)
            cmd = self.exec_argv(argv, cwd=str(cwd), env_file=env_file, env_names=list(multiline),
                                 interactive=stdin is not None, preserve_fds=len(pass_fds))
            if pass_fds:  # bash (not sh) for fd numbers above 9
                moves = " ".join(f"{self.fd_in_session(fd, pass_fds)}<&{fd}" for fd in pass_fds)
                cmd = ["/bin/bash", "-c", f'exec "$@" {moves}', "bash", *cmd]
            return await run_command(cmd, env=engine_env, stdin=stdin, on_line=on_line, pass_fds=pass_fds)
        finally:
            os.unlink(env_file)

    def process_scope(self) -> Scope:
        """Every process in the container runs as a host id of its range; the marker catches the rest."""
        if self._base is None:
            return Scope(session_id=self.session_id)
        return Scope(session_id=self.session_id, uid_ranges=(range(self._base, self._base + self._size),))

    def net_counters(self) -> tuple[int, int] | None:
        """The container's own network namespace (its main process's): its traffic never crosses a socket of the
        worker's, so counting sockets would read ~0. None before prepare, once it is gone, or on the host's network."""
        if self._main is None or not _alive(self._main):
            return None
        return namespace_counters(self._main.pid)

    async def down_reason(self) -> str | None:
        """Checked every second: a look at the main process; the engine is asked only once it is gone."""
        if self._down is None and self._main is not None and not _alive(self._main):
            self._down = await self._exit_story()
        return self._down

    async def _exit_story(self) -> str:
        status, tail = await self._engine(self.cli.inspect_argv(self.container, "{{.State.ExitCode}}"))
        if status:
            return f"the container {self.container} is gone (removed outside berth?)"
        code = tail[-1] if tail else "?"
        _, logs = await self._engine(self.cli.logs_argv(self.container, 10))
        story = f"the container {self.container} exited with status {code}"
        return story + (":\n" + "\n".join(logs[-10:]) if logs else " (no output)")

    async def _remove_container(self, attempts: int = 3) -> None:
        """`rm --force`, trusting the engine's own word on whether the container is gone: Podman 4.3 sometimes exits
        non-zero after removing it (a busy shm mount it fails to unlink), and that is no failure of the session."""
        tail: list[str] = []
        for attempt in range(attempts):
            status, tail = await self._engine(self.cli.remove_argv(self.container))
            gone, _ = await self._engine(self.cli.inspect_argv(self.container, "{{.Id}}"))
            if gone:  # inspect fails: no such container
                if status:
                    log.info("container %s removed; the engine also said: %s", self.container, " ".join(tail[-2:]))
                return
            await asyncio.sleep(0.5 * (attempt + 1))
        raise SetupFailed(f"could not remove the container {self.container}: " + "\n".join(tail[-3:]))

    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        if host is None:  # prepare() cut short: clean up as for a dead supervisor
            return await self.clean_up_orphan(self.session_id, self.session_dir, runtime_dir=self.runtime_dir)
        await self._remove_container()
        killed = await asyncio.to_thread(kill_scope, self.process_scope(), exclude=exclude_pids)
        await asyncio.to_thread(lock_home, host.home, self.session_uid)
        (self.session_dir / STATE_FILE).unlink(missing_ok=True)
        return killed

    @classmethod
    async def clean_up_orphan(cls, session_id: str, session_dir: Path, *, runtime_dir: Path) -> int:
        """What a dead supervisor would have torn down: the container (by label), leftovers of its id range,
        its secrets and sockets; the home is locked, as at teardown."""
        try:
            state = json.loads((session_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = {}
        with contextlib.suppress(OSError, ValueError, SetupFailed):
            ctx = read_context(session_dir)
            cli = ContainerCli.choose(state.get("cli") or ctx.container_cli, docker_host=ctx.container_docker_host)
            _, names = await run_command(cli.list_by_label_argv(session_id), env=_ENGINE_ENV)
            for name in {*names, container_name(session_id)}:  # the label finds it under any name
                await run_command(cli.remove_argv(name), env=_ENGINE_ENV)
        base = state.get("base")
        size = state.get("size") or USERNS_SIZE
        scope = Scope(session_id=session_id, uid_ranges=(range(base, base + size),) if base else ())
        killed = await asyncio.to_thread(kill_scope, scope)
        if base and state.get("home"):
            await asyncio.to_thread(lock_home, Path(state["home"]), base + SESSION_UID)
        for path in (session_dir / "secrets.json", session_dir / "scratch", session_dir / STATE_FILE, session_dir / "boot",
                     runtime_dir / session_id):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return killed

    async def _engine(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, list[str]]:
        return await run_command(argv, env=_ENGINE_ENV, stdin=stdin)


async def _password_hash(password: str) -> str:
    """SHA-512 crypt of the session password, for the container's /etc/shadow ("" when it cannot be made: no
    password login then, keys still work)."""
    status, tail = await run_command(["openssl", "passwd", "-6", "-stdin"], env=_ENGINE_ENV,
                                     stdin=password.encode() + b"\n")
    return tail[-1] if status == 0 and tail and tail[-1].startswith("$6$") else ""


def _sync_engine(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, env=_ENGINE_ENV, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, proc.stdout


def _write_state(session_dir: Path, state: dict) -> None:
    fd = os.open(session_dir / STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _has_gpus() -> bool:
    from berth.agent.gpus import GpuReader

    return GpuReader().available
