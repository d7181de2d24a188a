"""SSH into a session's container: OpenSSH's ``sshd -i`` runs INSIDE the container, one per connection.

The supervisor listens on the worker (``bind_host``, a plain host port, like the other kinds) and hands each
accepted connection to one ``<cli> exec`` running ``sshd -i`` in the container as container root. Podman passes
the socket itself in (``--preserve-fds``, as fd 3: sshd speaks to the client directly, nothing copies in
between). The Docker CLI passes no descriptors: there the socket is ``docker exec --interactive``'s stdin AND
stdout, the CLI copying the bytes (the attach stream, no pty: stderr stays a separate stream, written to the log;
the client's EOF reaches sshd as EOF). sshd's inetd mode works over those pipes as over a socket (dropbear's
does not: it exits on anything but a socket, why sshd is the one server here for both engines).

sshd checks the password against the container's ``/etc/shadow`` (``UsePAM no``), opens the session's pty in the
container and forwards ``-L`` ports inside the container's network namespace. It offers the modern algorithms
only (algorithms.py): it is the worker's own sshd, so the worker's ``ssh -Q`` says which names it knows. sshd and
sftp-server come from the read-only ``/berth`` bundle (bundle.py), so the image needs only ``/bin/sh``.

Set up once, as container root (mapped to an unprivileged host id), in one exec: the host key (made on the
worker, kept in the supervisor's private run dir) and sshd's config go through stdin into a directory only
container root reads; sshd's privilege separation dir is made; ``sshd -t`` checks it all, so a setup sshd
refuses fails the start with its words. The session user (uid 1000, its passwd, group and shadow entries: the
session password) and sshd's privilege separation user ``sshd`` are the backend's.
``spec.options``: ``container`` (its name), ``cli`` (podman | docker; detected when absent), ``docker_host``.
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
from .bundle import BIN, LOADER, MOUNT, RUN, run_argv
from .openssh import _host_key, login_lines
from .process import LOG_NAME, _log_tail

# the engine runs as root with this environment only (not the supervisor's, which may carry the session's HOME)
ENGINE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
CONF_DIR = "/run/berth-sshd"  # in the container, container root's only: the host key and sshd_config
CONFIG = f"{CONF_DIR}/sshd_config"
HOST_KEY = f"{CONF_DIR}/ssh_host_ed25519_key"
PRIVSEP_DIR = "/run/sshd"  # where this sshd build chroots its pre-auth child (root's, 0755)
MARKER_ENV = "BERTH_SSH_SERVER"  # on the shell above every sshd we start: stop() finds them by it
READY_TIMEOUT = 20.0
MISSING_SHELL = 127  # the engine's status when the command cannot be started at all

# Runs as container root; $1 $2 = the sizes of the host key and of sshd_config, which come on stdin (never in
# argv). Only sh built-ins and the bundle: the image need not have coreutils. sshd's privilege separation user
# `sshd` keeps the image's uid if it has one (else one the image does not use), its gid the same number: the
# usual 65534 is outside some engines' mappings (Podman's Docker API maps 65534 ids), and setgroups fails there.
# OpenSSH 9.8+ runs each connection in sshd-session (10.0+: sshd-auth before login), by path: the bundle's.
_INSTALL = r"""
set -ef
R="{run}" nl='
'
[ -x {loader} ] || {{ echo "berth: the SSH bundle is not mounted at {mount} in this container" >&2; exit 3; }}
used=" " kept= id=
while IFS= read -r line || [ -n "$line" ]; do
  rest=${{line#*:*:}}
  case $line in
    sshd:*) id=${{rest%%:*}} ;;
    *) kept="$kept$line$nl" used="$used${{rest%%:*}} " ;;
  esac
done < /etc/passwd
if [ -z "$id" ]; then
  id=101
  while case "$used" in *" $id "*) true ;; *) false ;; esac; do id=$((id + 1)); done
fi
umask 022
printf '%ssshd:x:%s:%s:sshd privilege separation:{privsep}:/usr/sbin/nologin\n' "$kept" "$id" "$id" > /etc/passwd
$R/mkdir -p {privsep}
umask 077
$R/mkdir -p {conf}
$R/dd of={key} bs=1 count="$1" status=none
{{ [ ! -e {bin}/sshd-session ] || echo "SshdSessionPath {bin}/sshd-session"
  [ ! -e {bin}/sshd-auth ] || echo "SshdAuthPath {bin}/sshd-auth"
  $R/dd bs=1 count="$2" status=none; }} > {config}
if ! said=$($R/sshd -t -f {config} 2>&1 </dev/null); then
  echo "berth: the bundled sshd refuses its setup here:" $said >&2
  exit 3
fi
[ -x /bin/bash ] || echo "berth: the image has no /bin/bash; logins need it"
"""


def sshd_config(spec: SshServerSpec, algorithm_lines: list[str]) -> str:
    """The sshd_config inside the container: what the openssh kind sets on the worker, with the container's paths
    and forwarding limited to `-L` (a local forward lands in the container's network namespace)."""
    lines = [
        f"HostKey {HOST_KEY}",
        "PidFile none",
        *login_lines(spec, password=bool(spec.password)),  # the container's /etc/shadow: the backend writes it
        "UseDNS no",
        f"Subsystem sftp {BIN}/sftp-server",
        "AllowTcpForwarding local",
        "AllowStreamLocalForwarding no",
        "GatewayPorts no",
        "PermitTunnel no",
        "X11Forwarding no",
        "StrictModes yes",
        "LogLevel INFO",
        "PermitUserEnvironment no",
        "ClientAliveInterval 30",
        f"SetEnv BERTH_TOOLS={BIN}",  # the wrapper puts the bundle's tools (scp, rsync, ...) last on PATH
        *algorithm_lines,
        # last: ForceCommand takes the rest of its line verbatim and runs it with the user's shell
        f"ForceCommand {shlex.quote(str(spec.shell_wrapper))}",
    ]
    return "\n".join(lines) + "\n"


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
        self._probe: asyncio.Task | None = None

    async def start(self, log: Callable[[str], None]) -> None:
        spec = self.spec
        if not self.container:
            raise SetupFailed("SSH into a container needs the container's name (spec.options['container'])")
        self.cli = ContainerCli.choose(spec.options.get("cli"), docker_host=spec.options.get("docker_host"))
        key, host_key = await _host_key(spec.run_dir)
        await self._install(key, sshd_config(spec, await algorithms.sshd_config_lines()), log)
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
        self.host_key, self.host_keys = host_key, [host_key]
        how = "its socket passed in" if not self._socket_is_stdio else "the Docker CLI's stdin and stdout"
        log(f"OpenSSH sshd inside container {self.container}, one `{self.cli.kind} exec` per connection ({how}), "
            f"reached on {spec.bind_host}:{self.port}")
        # `sshd -t` (in _install) proved sshd runs there with this config; the first handshake, through the exec
        # path, is checked beside the session's start rather than before it (an exec costs ~0.2 s): a failure
        # ends the session with sshd's words (alive() False, `failure`)
        self._probe = asyncio.create_task(self._first_handshake(log))

    async def _first_handshake(self, log: Callable[[str], None]) -> None:
        try:  # a real handshake start: sshd ran in the container and offered its algorithms
            offer = await algorithms.read_offer(self._loopback(), self.port, timeout=READY_TIMEOUT)
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            if not self._stopped:
                self.failure = (f"sshd did not answer inside container {self.container}: "
                                f"{_log_tail(self.spec.run_dir / LOG_NAME) or e or type(e).__name__}")
                log(self.failure)
            return
        if weaker := algorithms.weaker_than_modern(offer):  # sshd got the modern set: only a changed sshd says so
            log(f"sshd inside the container offers more than the modern set: {'; '.join(weaker)}")

    def _loopback(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.spec.bind_host, self.spec.bind_host)

    async def _install(self, key: Path, config: str, log: Callable[[str], None]) -> None:
        """The host key and sshd_config into the container, as container root (one exec; both go through stdin);
        sshd's privilege separation user and dir; ``sshd -t``. The session user and its password are the
        backend's (its passwd and shadow entries)."""
        assert self.cli is not None
        blobs = [key.read_bytes(), config.encode()]
        script = _INSTALL.format(run=RUN, loader=LOADER, mount=MOUNT, bin=BIN, privsep=PRIVSEP_DIR, conf=CONF_DIR,
                                 key=HOST_KEY, config=CONFIG)
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

    def _sshd_argv(self) -> list[str]:
        """One connection's command on the worker: `<cli> exec` as container root running ``sshd -i``."""
        assert self.cli is not None
        sshd = shlex.join([*run_argv("sshd"), "-i", "-e", "-f", CONFIG])  # -e: its log to stderr, our log file
        # sshd's process titles overwrite its environment, marker included: a shell stays above it, marked, and
        # stop() ends that shell with everything below it (the trailing `exit` keeps the shell from exec'ing sshd)
        if self._socket_is_stdio:  # Docker: the CLI's stdin and stdout are the socket; they are sshd's
            return self.cli.exec_argv(self.container, ["/bin/sh", "-c", f"{sshd}; exit"], user="0:0",
                                      env_names=[MARKER_ENV], interactive=True)
        # fd 3 is the client's socket (--preserve-fds): sshd -i wants it as stdin and stdout
        inner = f"{sshd} <&3 >&3 3>&-; exit"
        exec_argv = self.cli.exec_argv(self.container, ["/bin/sh", "-c", inner], user="0:0",
                                       env_names=[MARKER_ENV], preserve_fds=1)
        return ["/bin/sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh", *exec_argv]  # the socket, stdin here, to fd 3

    @property
    def _socket_is_stdio(self) -> bool:
        return self.cli is not None and self.cli.kind == "docker"

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        env = {**ENGINE_ENV, MARKER_ENV: self._marker}
        argv = self._sshd_argv()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            try:
                with open(self.spec.run_dir / LOG_NAME, "ab") as log_file:
                    out = conn.fileno() if self._socket_is_stdio else log_file
                    proc = await asyncio.create_subprocess_exec(*argv, stdin=conn.fileno(), stdout=out,
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
        return (not self._stopped and self.failure is None and self._accepting is not None
                and not self._accepting.done())

    def _inside(self) -> list[psutil.Process]:
        """The shells above our sshds in the container (host processes of its namespaces), found by the marker."""
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
        """Stop listening; end every connection, its sshd in the container and the shells below it."""
        if self._stopped:
            return
        self._stopped = True
        if self._probe is not None:
            self._probe.cancel()
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(BaseException):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        # the tree first, frozen while the connections are still up: a hung-up sshd would leave its login's
        # processes to the container's pid 1, out of reach below the marked shell
        victims = await asyncio.to_thread(self._inside) if self._conns else []
        await kill_tree([*victims, *self.children()])
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # the client hangs up whoever else holds the socket
        for proc, conn in list(self._conns.items()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
            conn.close()
        self._conns.clear()
