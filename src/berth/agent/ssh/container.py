"""SSH into a session's container: dropbear runs INSIDE the container, one per connection, in inetd mode.

The supervisor listens on the worker (``bind_host``, a plain host port, like the other kinds) and hands each
accepted socket to ``<cli> exec --preserve-fds 1 <container> dropbear -i`` as fd 3: dropbear then speaks to the
client directly (no copying in between), checks the password against the container's ``/etc/shadow``, opens the
session's pty in the container and forwards ``-L`` ports inside the container's network namespace. dropbear
comes from the read-only ``/berth`` bundle (bundle.py), so the image needs only ``/bin/sh``.

Set up once, as container root (mapped to an unprivileged host id), in one exec: the host keys (made on the
worker, kept in the supervisor's private run dir) go through stdin into a directory only container root reads.
The session user (uid 1000, its passwd, group and shadow entries: the session password) is the backend's.
``spec.options``: ``container`` (its name), ``cli`` (podman | docker; detected when absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import socket
from pathlib import Path
from typing import Callable

import psutil

from berth.agent.backends.container_cli import ContainerCli
from berth.errors import SetupFailed

from . import algorithms
from .base import SshServer, SshServerSpec, kill_tree
from .bundle import MOUNT, RUN, run_argv
from .dropbear import _host_keys
from .process import LOG_NAME, _log_tail

# the engine runs as root with this environment only (not the supervisor's, which may carry the session's HOME)
ENGINE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
KEY_DIR = "/etc/berth-ssh"  # in the container, container root's only
MARKER_ENV = "BERTH_SSH_SERVER"  # on every dropbear we start: stop() finds them in the container by it
READY_TIMEOUT = 20.0
MISSING_SHELL = 127  # the engine's status when the command cannot be started at all

# Runs as container root; $1 $2 = the sizes of the ed25519 and rsa host keys, which come on stdin. Only sh
# built-ins and the bundle: the image need not have coreutils.
_INSTALL = r"""
set -e
R="{run}"
$R/dropbear -V >/dev/null 2>&1 </dev/null || {{ echo "berth: the bundled dropbear does not run here (is {mount} mounted?)" >&2; exit 3; }}
umask 077
$R/mkdir -p {keys}
$R/dd of={keys}/ed25519 bs=1 count="$1" status=none
$R/dd of={keys}/rsa bs=1 count="$2" status=none
[ -x /bin/bash ] || echo "berth: the image has no /bin/bash; logins need it"
"""


class ContainerSshServer(SshServer):
    kind = "container"

    def __init__(self, spec: SshServerSpec):
        super().__init__(spec)
        self.container = spec.options.get("container", "")
        self.cli: ContainerCli | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._conns: dict[asyncio.subprocess.Process, socket.socket] = {}
        self._marker = secrets.token_hex(8)
        self._stopped = False

    async def start(self, log: Callable[[str], None]) -> None:
        spec = self.spec
        if not self.container:
            raise SetupFailed("SSH into a container needs the container's name (spec.options['container'])")
        self.cli = ContainerCli.choose(spec.options.get("cli"))
        keys, pubs = await _host_keys(spec.run_dir)
        await self._install(keys, log)
        family = socket.AF_INET6 if ":" in spec.bind_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((spec.bind_host, spec.port or 0))
            listener.listen(64)
        except OSError as e:
            listener.close()
            raise SetupFailed(f"cannot listen on {spec.bind_host}: {e.strerror or e}") from e
        listener.setblocking(False)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept_loop())
        self.host_key, self.host_keys = pubs[0], pubs
        try:  # a real handshake start: dropbear ran in the container and offered its algorithms
            offer = await algorithms.read_offer(self._loopback(), self.port, timeout=READY_TIMEOUT)
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            await self.stop()
            raise SetupFailed(f"dropbear did not answer inside container {self.container}: "
                              f"{_log_tail(spec.run_dir / LOG_NAME) or e or type(e).__name__}") from None
        log(f"dropbear inside container {self.container}, reached on {spec.bind_host}:{self.port}")
        if weaker := algorithms.weaker_than_modern(offer):
            log(f"dropbear offers the strongest set its build allows, weaker than OpenSSH: {'; '.join(weaker)}")

    def _loopback(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.spec.bind_host, self.spec.bind_host)

    async def _install(self, keys: list[Path], log: Callable[[str], None]) -> None:
        """The host keys into the container, as container root (one exec; the keys go through stdin). The session
        user and its password are the backend's (its passwd and shadow entries)."""
        assert self.cli is not None
        blobs = [k.read_bytes() for k in keys]
        script = _INSTALL.format(run=RUN, mount=MOUNT, keys=KEY_DIR)
        argv = self.cli.exec_argv(self.container, ["/bin/sh", "-c", script, "sh", *(str(len(b)) for b in blobs)],
                                  user="0:0", interactive=True)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=ENGINE_ENV)
        out, err = await proc.communicate(b"".join(blobs))
        text = (err or b"").decode(errors="replace").strip()
        if proc.returncode != 0:
            if proc.returncode == MISSING_SHELL or "/bin/sh" in text and "no such file" in text.lower():
                raise SetupFailed(f"the image of container {self.container} has no /bin/sh: SSH into the container "
                                  "needs a shell (and nothing else of the image)")
            ours = [line for line in text.splitlines() if line.startswith("berth: ")]
            raise SetupFailed(f"cannot set up SSH inside container {self.container}: "
                              f"{(ours[-1][7:] if ours else text[-400:]) or f'status {proc.returncode}'}")
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("berth: "):
                log(line[7:])

    def _dropbear_argv(self) -> list[str]:
        spec = self.spec
        argv = [*run_argv("dropbear"), "-i", "-r", f"{KEY_DIR}/ed25519", "-r", f"{KEY_DIR}/rsa",
                "-c", f"BERTH_TOOLS={MOUNT}/bin exec {shlex.quote(str(spec.shell_wrapper))}", "-K", "30"]
        if spec.user != "root":
            argv.append("-w")
        if not spec.password:
            argv.append("-s")
        # fd 3 is the client's socket (--preserve-fds): dropbear -i wants it as stdin and stdout
        inner = f"exec {shlex.join(argv)} <&3 >&3 3>&-"
        assert self.cli is not None
        exec_argv = self.cli.exec_argv(self.container, ["/bin/sh", "-c", inner], user="0:0",
                                       env_names=[MARKER_ENV], preserve_fds=1)
        return ["/bin/sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh", *exec_argv]  # the socket, stdin here, to fd 3

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        env = {**ENGINE_ENV, MARKER_ENV: self._marker}
        argv = self._dropbear_argv()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            try:
                with open(self.spec.run_dir / LOG_NAME, "ab") as log_file:
                    proc = await asyncio.create_subprocess_exec(*argv, stdin=conn.fileno(), stdout=log_file,
                                                                stderr=log_file, env=env)
            except OSError:
                conn.close()
                continue
            self._conns[proc] = conn
            asyncio.create_task(self._reap(proc))

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        conn = self._conns.pop(proc, None)
        if conn is not None:
            conn.close()

    def alive(self) -> bool:
        return not self._stopped and self._accepting is not None and not self._accepting.done()

    def _inside(self) -> list[psutil.Process]:
        """Our dropbears in the container (host processes of its namespaces), found by the marker."""
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARKER_ENV) == self._marker and p.pid != os.getpid():
                    found.append(p)
        return found

    def children(self) -> list[psutil.Process]:
        out = []
        for proc in list(self._conns):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                out += [p, *p.children(recursive=True)]
        return out

    async def stop(self) -> None:
        """Stop listening; end every connection, its dropbear in the container and the shells below it."""
        if self._stopped:
            return
        self._stopped = True
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(BaseException):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # the client hangs up whoever else holds the socket
        victims = await asyncio.to_thread(self._inside) if self._conns else []
        await kill_tree([*victims, *self.children()])
        for proc, conn in list(self._conns.items()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
            conn.close()
        self._conns.clear()
