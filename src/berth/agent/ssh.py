"""Per-session SSH servers.

Every session gets its own SSH server on its own port, with its own config and host keys kept
in a private run directory, so sessions never share state with each other or with the host's
sshd. Three kinds:

* ``openssh``  - the system's ``/usr/sbin/sshd`` (needs root: it checks passwords and switches users),
* ``dropbear`` - ``/usr/sbin/dropbear``, light and also usable unprivileged where the host allows,
* ``builtin``  - an asyncssh server inside the calling process (:mod:`berth.agent.builtin_sshd`),
  for non-root agents where neither of the others can check passwords or allocate a pty.

Every login runs ``spec.shell_wrapper`` as a forced command.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import hashlib
import os
import pwd
import shlex
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

import psutil

from berth.agent import ssh_algorithms
from berth.errors import SetupFailed

SshKind = Literal["openssh", "dropbear", "builtin"]

SSHD = "/usr/sbin/sshd"  # absolute: sshd re-executes itself per connection
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "/usr/bin/dropbearkey"
SHADOW = "/etc/shadow"
MOUNTS = "/proc/self/mounts"
PTMX = "/dev/ptmx"
LOG_NAME = "ssh-server.log"
START_TIMEOUT = 10.0
KILL_GRACE = 1.0


@dataclass
class SshServerSpec:
    kind: SshKind
    run_dir: Path
    home: Path
    user: str
    password: str
    authorized_keys: list[str]
    shell_wrapper: Path
    bind_host: str = "0.0.0.0"
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    on_input: Callable[[], None] | None = None  # built-in server only: a client sent data (idle detection)
    # Writes files in the home as the session user (a supervisor's act_as_session "write_files"); when unset
    # (a server started on its own), authorized_keys is written here, never through a link.
    write_home_files: Callable[[list[dict]], Awaitable[None]] | None = None

    def __repr__(self) -> str:  # never print the password
        return f"SshServerSpec(kind={self.kind!r}, user={self.user!r}, run_dir={str(self.run_dir)!r}, port={self.port!r})"


def fingerprint(public_key_line: str) -> str:
    """``SHA256:<base64 without padding>`` of a public key line, as ``ssh-keygen -l`` prints it."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise ValueError("not a public key line")
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port(host: str = "0.0.0.0") -> int:
    """A TCP port that is free right now on ``host`` (the usual small race applies)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def write_authorized_keys(home: Path, keys: list[str], uid: int | None, gid: int | None) -> Path:
    """Write ``home/.ssh/authorized_keys`` (700/600, owned by uid/gid).

    This may run as root inside a directory the user controls, so nothing there is written
    through: a fresh temp file (O_EXCL|O_NOFOLLOW) is renamed over the old file, which replaces
    a planted symlink or hard link instead of following it."""
    uid_, gid_ = (-1 if uid is None else uid), (-1 if gid is None else gid)
    own = uid is not None or gid is not None
    try:
        if not home.exists():
            home.mkdir(parents=True, mode=0o755)
            if own:
                os.chown(home, uid_, gid_)
        ssh_dir = home / ".ssh"
        if not ssh_dir.is_symlink() and not ssh_dir.exists():
            os.mkdir(ssh_dir, 0o700)
        if not stat.S_ISDIR(os.lstat(ssh_dir).st_mode):
            raise SetupFailed(f"{ssh_dir} is not a directory")
        os.chmod(ssh_dir, 0o700)
        if own:
            os.chown(ssh_dir, uid_, gid_)
        path = ssh_dir / "authorized_keys"
        tmp = ssh_dir / f".authorized_keys.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            if own:
                os.fchown(fd, uid_, gid_)
            f.write("".join(k.strip() + "\n" for k in keys if k.strip()).encode())
        os.replace(tmp, path)
    except OSError as e:
        raise SetupFailed(f"cannot write {home}/.ssh/authorized_keys: {e.strerror or e}") from e
    return path


async def _run(*argv: str) -> str:
    """Run a short helper (key generation); its stdout, or SetupFailed with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SetupFailed(f"{Path(argv[0]).name} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace")


def _pubkey_line(text: str, key_type: str) -> str:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == key_type:
            return f"{parts[0]} {parts[1]}"
    raise SetupFailed(f"could not read the {key_type} host key")


def _tty_gid() -> int | None:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return None


def _nonroot_pty_ok() -> bool:
    """Whether dropbear, unprivileged, can hand out a pty: it chowns the new pty to the tty group,
    which only works if devpts already gives ptys that group (gid=5) or we belong to it."""
    if not os.access(PTMX, os.R_OK | os.W_OK):
        return False
    tty = _tty_gid()
    if tty is None or tty in os.getgroups() or tty == os.getegid():
        return True
    try:
        with open(MOUNTS) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "/dev/pts" and parts[2] == "devpts":
                    opts = parts[3].split(",")
                    return f"gid={tty}" in opts
    except OSError:
        pass
    return False


def _nonroot_dropbear_problem() -> str | None:
    """Why dropbear cannot serve logins as a non-root user here, or None if it can."""
    if not os.access(DROPBEAR, os.X_OK):
        return "dropbear is not installed"
    if not os.access(SHADOW, os.R_OK):
        return "dropbear cannot check passwords as a non-root user here"
    if not _nonroot_pty_ok():
        return "dropbear cannot allocate terminals as a non-root user here"
    return None


def choose_kind(want_dropbear: bool, is_root: bool) -> tuple[SshKind, str]:
    """The server kind to use and a one-line human reason for the console."""
    have_sshd = os.access(SSHD, os.X_OK)
    have_dropbear = os.access(DROPBEAR, os.X_OK)
    if is_root:
        if want_dropbear and have_dropbear:
            return "dropbear", "using dropbear as requested"
        if have_sshd:
            why = "dropbear was requested but is not installed; " if want_dropbear else ""
            return "openssh", f"{why}using OpenSSH sshd"
        if have_dropbear:
            return "dropbear", "OpenSSH sshd is not installed; using dropbear"
        return "builtin", "neither sshd nor dropbear is installed; using the built-in SSH server"
    problem = _nonroot_dropbear_problem()
    if problem is None:
        return "dropbear", "using dropbear" + (" as requested" if want_dropbear else " (non-root agent)")
    return "builtin", f"{problem}; using the built-in SSH server"


def _freeze(roots: list[psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP ``roots`` and all their descendants, rescanning the children of each newly stopped
    process until none appear: a stopped process cannot fork, so nothing escapes the kill."""
    frozen: dict[int, psutil.Process] = {}
    todo = list(roots)
    while todo:
        new = []
        for p in todo:
            if p.pid in frozen or p.pid == os.getpid():
                continue
            try:
                p.suspend()
            except psutil.Error:
                continue
            frozen[p.pid] = p
            new.append(p)
        todo = []
        for p in new:
            try:
                todo += p.children(recursive=True)
            except psutil.Error:
                pass
    return list(frozen.values())


async def kill_tree(roots: list[psutil.Process], sig: int = signal.SIGTERM, grace: float = KILL_GRACE) -> None:
    """Freeze ``roots`` and their descendants, send ``sig``, let them run, and SIGKILL whatever is
    left after ``grace`` s (zombies count as gone)."""
    procs = _freeze(roots)
    for action in (lambda p: p.send_signal(sig), lambda p: p.resume()):
        for p in procs:
            try:
                action(p)
            except psutil.Error:
                pass
    deadline = time.monotonic() + grace
    left = procs
    while left:
        left = [p for p in left if _alive(p)]
        if not left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.02)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class SshServer:
    """Handle for a running per-session SSH server."""

    def __init__(self, kind: SshKind, port: int, host_key: str, *,
                 proc: asyncio.subprocess.Process | None = None, builtin: Any = None,
                 host_keys: list[str] | None = None):
        self.kind: SshKind = kind
        self.port = port
        self.host_key = host_key  # ed25519: the one to pin
        self.host_keys = host_keys or [host_key]  # every key the server may present (for known_hosts)
        self.host_key_fingerprint = fingerprint(host_key)
        self.pids: list[int] = [proc.pid] if proc else []
        self._proc = proc
        self._builtin = builtin
        self._stopped = False

    def __repr__(self) -> str:
        return f"SshServer(kind={self.kind!r}, port={self.port}, pids={self.pids})"

    def children(self) -> list[psutil.Process]:
        """Every live process the server started: connections, shells, their jobs. The server is
        a child subreaper (see _spawn), so even daemonized orphans stay below it."""
        try:
            return psutil.Process(self.pids[0]).children(recursive=True) if self.pids else []
        except psutil.Error:
            return []

    def alive(self) -> bool:
        if self._stopped:
            return False
        if self._builtin is not None:
            return self._builtin.alive()
        return self._proc is not None and self._proc.returncode is None

    async def stop(self) -> None:
        """Stop the server and everything it started (connections, shells, their children)."""
        if self._stopped:
            return
        self._stopped = True
        if self._builtin is not None:
            await self._builtin.close()
            return
        assert self._proc is not None
        victims = self.children()
        try:
            victims.insert(0, psutil.Process(self._proc.pid))
        except psutil.Error:
            pass
        await kill_tree(victims)
        try:
            await asyncio.wait_for(self._proc.wait(), 2.0)  # reap our direct child
        except asyncio.TimeoutError:
            pass


def _listening(pid: int, port: int) -> bool:
    # asks the kernel whether *this* process listens, rather than connecting: a connect can be
    # answered by something else (a transparent proxy, another server) and makes sshd fork
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.AccessDenied:  # e.g. /proc mounted hidepid: any listener on the port will do
        conns = psutil.net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


async def _wait_listening(proc: asyncio.subprocess.Process, name: str, port: int, log_path: Path) -> None:
    """Poll until the server listens on its port; SetupFailed with the server's log tail if it dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.returncode is not None:
            raise SetupFailed(f"{name} exited with status {proc.returncode}: {_log_tail(log_path)}")
        if _listening(proc.pid, port):
            return
        if time.monotonic() > deadline:
            raise SetupFailed(f"{name} did not start listening on port {port} within {START_TIMEOUT:.0f} s: {_log_tail(log_path)}")
        await asyncio.sleep(0.005)


_PR_SET_CHILD_SUBREAPER = 36
_prctl: Any = None


def _become_subreaper() -> None:
    # runs in the forked child before exec (the setting survives exec): orphans of the server's
    # descendants, like a user's daemonized jobs, are reparented to the server rather than to
    # init, so stop() finds them all below it. Only a pre-resolved C call, nothing that locks.
    if _prctl is not None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


async def _spawn(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    global _prctl
    if _prctl is None:
        import ctypes

        _prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # None off Linux: best effort
    with open(log_path, "ab") as log_file:
        # stays in our process group (start_new_session=False); stop() kills it explicitly
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=False, preexec_fn=_become_subreaper,
        )


def _cfg_value(v: str) -> str:
    return f'"{v}"' if any(c.isspace() for c in v) or '"' in v or "#" in v else v


async def _openssh_host_key(run_dir: Path) -> tuple[Path, str]:
    key = run_dir / "ssh_host_ed25519_key"
    pub = key.with_name(key.name + ".pub")
    if not (key.exists() and pub.exists()):  # reuse keeps the host key stable across restarts
        for p in (key, pub):
            p.unlink(missing_ok=True)
        await _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "berth", "-f", str(key))
    return key, _pubkey_line(pub.read_text(), "ssh-ed25519")


def _sshd_config(spec: SshServerSpec, port: int, key: Path, algorithms: list[str]) -> str:
    auth_keys = str(spec.home / ".ssh" / "authorized_keys").replace("%", "%%")  # % starts a token
    lines = [
        f"Port {port}",
        f"ListenAddress {spec.bind_host}",
        f"HostKey {_cfg_value(str(key))}",
        f"PidFile {_cfg_value(str(spec.run_dir / 'sshd.pid'))}",
        "UsePAM no",
        "PasswordAuthentication yes",
        "PermitEmptyPasswords no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {_cfg_value(auth_keys)}",
        f"AllowUsers {spec.user}",
        f"PermitRootLogin {'yes' if spec.user == 'root' else 'no'}",
        "PrintMotd no",
        "PrintLastLog no",
        f"Subsystem sftp {SFTP_SERVER}",
        "AllowTcpForwarding yes",  # VS Code Remote-SSH tunnels to its server through this
        "X11Forwarding no",
        "StrictModes yes",
        "LogLevel INFO",
        "PermitUserEnvironment no",
        "ClientAliveInterval 30",
        *algorithms,  # the modern set only (ssh_algorithms): the distribution defaults include NIST curves and SHA-1
        # last: ForceCommand takes the rest of its line verbatim and runs it with the user's shell
        f"ForceCommand {shlex.quote(str(spec.shell_wrapper))}",
    ]
    return "\n".join(lines) + "\n"


async def _start_openssh(spec: SshServerSpec, port: int, log: Callable[[str], None]) -> SshServer:
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    os.chmod("/run/sshd", 0o755)
    key, host_key = await _openssh_host_key(spec.run_dir)
    config = spec.run_dir / "sshd_config"
    config.write_text(_sshd_config(spec, port, key, await ssh_algorithms.sshd_config_lines()))
    os.chmod(config, 0o600)
    log_path = spec.run_dir / LOG_NAME
    proc = await _spawn([SSHD, "-D", "-e", "-f", str(config)], log_path)
    await _guarded_wait(proc, "sshd", spec, port, log_path)
    log(f"OpenSSH sshd listening on {spec.bind_host}:{port}")
    return SshServer("openssh", port, host_key, proc=proc)


def _write_dropbear_rsa(path: Path) -> str:
    """Generate an RSA key (ssh_algorithms.RSA_BITS) straight into dropbear's format; its public key line.

    OpenSSL takes ~50-80 ms where dropbearkey takes 0.2-1 s, and rsa would dominate the start."""
    from cryptography.hazmat.primitives.asymmetric import rsa  # asyncssh's dependency

    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    def mpint(n: int) -> bytes:  # SSH mpint: big-endian, a leading 0 byte keeps it positive
        return string(n.to_bytes((n.bit_length() + 8) // 8, "big"))

    priv = rsa.generate_private_key(public_exponent=65537, key_size=ssh_algorithms.RSA_BITS).private_numbers()
    pub = string(b"ssh-rsa") + mpint(priv.public_numbers.e) + mpint(priv.public_numbers.n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pub + mpint(priv.d) + mpint(priv.p) + mpint(priv.q))
    return "ssh-rsa " + base64.b64encode(pub).decode()


async def _dropbear_host_keys(run_dir: Path) -> tuple[list[Path], list[str]]:
    # ed25519 first. An rsa key too: dropbear offers rsa-sha2-256 whatever keys it has, and a client
    # choosing it (asyncssh) makes dropbear fail without one. No ecdsa key: no NIST curve on offer.
    types = [("ed25519", "ssh-ed25519"), ("rsa", "ssh-rsa")]

    async def one(t: str, name: str) -> tuple[Path, str]:
        path = run_dir / f"dropbear_{t}_host_key"
        if path.exists():  # reuse keeps host keys stable across restarts; -y prints the public half
            line = _pubkey_line(await _run(DROPBEARKEY, "-y", "-f", str(path)), name)
            if t != "rsa" or ssh_algorithms.rsa_bits(line) >= ssh_algorithms.RSA_BITS:
                return path, line
            path.unlink()  # made before RSA_BITS was raised
        if t == "rsa":
            return path, await asyncio.to_thread(_write_dropbear_rsa, path)
        return path, _pubkey_line(await _run(DROPBEARKEY, "-t", t, "-f", str(path)), name)

    got = await asyncio.gather(*(one(*t) for t in types))
    return [p for p, _ in got], [k for _, k in got]


async def _start_dropbear(spec: SshServerSpec, port: int, log: Callable[[str], None]) -> SshServer:
    keys, pubs = await _dropbear_host_keys(spec.run_dir)
    listen = f"[{spec.bind_host}]:{port}" if ":" in spec.bind_host else f"{spec.bind_host}:{port}"
    argv = [DROPBEAR, "-F", "-E", "-m", "-p", listen]
    for k in keys:
        argv += ["-r", str(k)]
    argv += ["-c", shlex.quote(str(spec.shell_wrapper)), "-P", str(spec.run_dir / "dropbear.pid"), "-K", "30"]
    if spec.user != "root":
        argv.append("-w")
    try:  # dropbear has no AllowUsers; restricting to the user's own group is the closest
        argv += ["-G", grp.getgrgid(pwd.getpwnam(spec.user).pw_gid).gr_name]
    except KeyError:
        pass
    log_path = spec.run_dir / LOG_NAME
    proc = await _spawn(argv, log_path)
    await _guarded_wait(proc, "dropbear", spec, port, log_path)
    log(f"dropbear listening on {spec.bind_host}:{port}")
    # dropbear's algorithms are fixed when it is built (no options narrow them): say where it is weaker
    await ssh_algorithms.report_weaker("dropbear", spec.bind_host, port, log)
    return SshServer("dropbear", port, pubs[0], proc=proc, host_keys=pubs)


async def _guarded_wait(proc: asyncio.subprocess.Process, name: str, spec: SshServerSpec, port: int, log_path: Path) -> None:
    try:
        await _wait_listening(proc, name, port, log_path)
    except BaseException:
        if proc.returncode is None:  # also on cancellation: never leave a stray server behind
            proc.kill()
            await asyncio.shield(proc.wait())
        raise


async def start_ssh_server(spec: SshServerSpec, log: Callable[[str], None]) -> SshServer:
    """Write config and keys, start the server, wait until its port accepts TCP connections."""
    if not spec.shell_wrapper.is_absolute():
        raise SetupFailed(f"shell wrapper must be an absolute path: {spec.shell_wrapper}")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.run_dir, 0o700)  # keys live here
    if spec.write_home_files is not None:
        keys = "".join(k.strip() + "\n" for k in spec.authorized_keys if k.strip())
        await spec.write_home_files([{"path": str(spec.home / ".ssh" / "authorized_keys"), "content": keys.encode(),
                                      "mode": 0o600, "parent_mode": 0o700}])
    else:
        write_authorized_keys(spec.home, spec.authorized_keys, spec.uid, spec.gid)
    if spec.kind == "builtin":
        from berth.agent.builtin_sshd import start_builtin  # imports asyncssh only when needed

        return await start_builtin(spec, log)
    try:
        port = spec.port or free_port(spec.bind_host)
    except OSError as e:
        raise SetupFailed(f"cannot listen on {spec.bind_host}: {e.strerror or e}") from e
    if spec.kind == "openssh":
        return await _start_openssh(spec, port, log)
    if spec.kind == "dropbear":
        return await _start_dropbear(spec, port, log)
    raise SetupFailed(f"unknown SSH server kind {spec.kind!r}")


def undo_inherited_signal_ignores() -> None:
    """An ignored signal stays ignored across exec, and a shell cannot even trap it. An agent started under
    `nohup` would hand an ignored SIGHUP to every session shell, and a dropped connection would then leave
    its processes running. sshd resets these for its children; the built-in server's host does it here."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
