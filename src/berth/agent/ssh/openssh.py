"""OpenSSH's ``sshd`` per session (needs root: it checks passwords and switches users)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Callable

from . import algorithms
from .base import SshServerSpec
from .process import ProcessSshServer, pubkey_line, run_helper

SSHD = "/usr/sbin/sshd"  # absolute: sshd re-executes itself per connection
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class OpenSshServer(ProcessSshServer):
    kind = "openssh"

    async def start(self, log: Callable[[str], None]) -> None:
        spec = self.spec
        port = self.listen_port()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        os.chmod("/run/sshd", 0o755)
        key, host_key = await _host_key(spec.run_dir)
        config = spec.run_dir / "sshd_config"
        config.write_text(_sshd_config(spec, port, key, await algorithms.sshd_config_lines()))
        os.chmod(config, 0o600)
        await self.spawn([SSHD, "-D", "-e", "-f", str(config)], "sshd", port)
        self.host_key, self.host_keys = host_key, [host_key]
        log(f"OpenSSH sshd listening on {spec.bind_host}:{port}")


def _cfg_value(v: str) -> str:
    return f'"{v}"' if any(c.isspace() for c in v) or '"' in v or "#" in v else v


async def _host_key(run_dir: Path) -> tuple[Path, str]:
    key = run_dir / "ssh_host_ed25519_key"
    pub = key.with_name(key.name + ".pub")
    if not (key.exists() and pub.exists()):  # reuse keeps the host key stable across restarts
        for p in (key, pub):
            p.unlink(missing_ok=True)
        await run_helper(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "berth", "-f", str(key))
    return key, pubkey_line(pub.read_text(), "ssh-ed25519")


def login_lines(spec: SshServerSpec, *, password: bool = True) -> list[str]:
    """Who may log in and how, the same for every sshd berth configures: the session user only, by the session
    password (checked against the shadow entry: no PAM) or a key from its authorized_keys."""
    auth_keys = str(spec.home / ".ssh" / "authorized_keys").replace("%", "%%")  # % starts a token
    return [
        "UsePAM no",
        f"PasswordAuthentication {'yes' if password else 'no'}",
        "PermitEmptyPasswords no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {_cfg_value(auth_keys)}",
        f"AllowUsers {spec.user}",
        f"PermitRootLogin {'yes' if spec.user == 'root' else 'no'}",
        "PrintMotd no",
        "PrintLastLog no",
    ]


def _sshd_config(spec: SshServerSpec, port: int, key: Path, algorithm_lines: list[str]) -> str:
    lines = [
        f"Port {port}",
        f"ListenAddress {spec.bind_host}",
        f"HostKey {_cfg_value(str(key))}",
        f"PidFile {_cfg_value(str(spec.run_dir / 'sshd.pid'))}",
        *login_lines(spec),
        f"Subsystem sftp {SFTP_SERVER}",
        "AllowTcpForwarding yes",  # VS Code Remote-SSH tunnels to its server through this
        "X11Forwarding no",
        "StrictModes yes",
        "LogLevel INFO",
        "PermitUserEnvironment no",
        "ClientAliveInterval 30",
        *algorithm_lines,  # the modern set only (algorithms.py): the distribution defaults include NIST curves and SHA-1
        # last: ForceCommand takes the rest of its line verbatim and runs it with the user's shell
        f"ForceCommand {shlex.quote(str(spec.shell_wrapper))}",
    ]
    return "\n".join(lines) + "\n"
