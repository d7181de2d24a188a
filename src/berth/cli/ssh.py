"""`berth ssh ID` and `berth ssh-config`: log in with the pinned host key, your berth key, or the session password.

By default the connection goes through the berth server (`berth ssh-proxy` as OpenSSH's ProxyCommand, the
gateway's `/s/<id>/ssh`, the worker's tunnel), so it works when the worker's SSH port is unreachable from here;
the host key is pinned under the alias `berth-<id>`. `--direct` connects straight to the reported host:port.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import sys
from pathlib import Path
from typing import Optional

import typer

from berth.errors import Conflict
from berth.schemas import SessionView

from .auth import ssh_identity
from .common import err, escape, guard, run, settings

BEGIN, END = "# >>> berth sessions (managed by `berth ssh-config`) >>>", "# <<< berth sessions <<<"


def known_hosts_path() -> Path:
    return settings().config_dir / "known_hosts"


def host_key_alias(view: SessionView) -> str:
    """The name ssh checks the host key under through the tunnel (HostKeyAlias): one per session."""
    return f"berth-{view.id}"


def pin_host_key(view: SessionView, direct: bool = False) -> Path:
    """Record the session's host key so ssh verifies it (StrictHostKeyChecking=yes): under [host]:port for a
    direct connection, under the session's alias through the tunnel."""
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = f"[{view.ssh.host}]:{view.ssh.port}" if direct else host_key_alias(view)
    lines = [ln for ln in (path.read_text().splitlines() if path.exists() else []) if not ln.startswith(entry + " ")]
    if view.ssh.host_key:
        lines.append(f"{entry} {view.ssh.host_key}")
    path.write_text("\n".join(lines) + "\n")
    return path


def askpass_script() -> Path:
    """ssh reads the password from this helper, which reads it from the environment: never argv, never a file."""
    path = settings().config_dir / "askpass.sh"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text('#!/bin/sh\nprintf "%s\\n" "$BERTH_SSH_PASSWORD"\n')
        path.chmod(stat.S_IRWXU)
    return path


def berth_argv() -> list[str]:
    """How another program starts this berth: its absolute path (ssh-config entries must work from any shell,
    VS Code's included), or this Python with the CLI module when berth was not started as a `berth` script."""
    script = shutil.which(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script and Path(script).name == "berth":
        return [str(Path(script).resolve())]
    return [sys.executable, "-m", "berth.cli.main"]


def proxy_command(view: SessionView) -> str:
    """The ProxyCommand value: shell-quoted, and `%` doubled since ssh expands %-tokens in it."""
    return shlex.join([*berth_argv(), "ssh-proxy", view.id]).replace("%", "%%")


def ssh_argv(view: SessionView, command: list[str], tty: bool | None, direct: bool = False) -> tuple[list[str], dict[str, str]]:
    if view.ssh is None:
        raise Conflict(f"session {view.id} is {view.status.value}: no SSH server to connect to")
    known = pin_host_key(view, direct)
    argv = ["ssh", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"]
    if direct:
        argv += ["-p", str(view.ssh.port)]
    else:
        argv += ["-o", f"ProxyCommand={proxy_command(view)}", "-o", f"HostKeyAlias={host_key_alias(view)}"]
    if ssh_identity().exists():
        argv += ["-i", str(ssh_identity())]
    if tty:
        argv.append("-t")
    argv.append(f"{view.ssh.user}@{view.ssh.host if direct else host_key_alias(view)}")
    if command:
        argv += ["--", *command]
    env = dict(os.environ, SSH_ASKPASS=str(askpass_script()), SSH_ASKPASS_REQUIRE="force", BERTH_SSH_PASSWORD=view.ssh.password)
    return argv, env


def ssh(session_id: str, command: Optional[list[str]] = typer.Argument(None, help="Command to run instead of a shell (after --)"),
        tty: Optional[bool] = typer.Option(None, "--tty/--no-tty", "-t", help="Force a terminal"),
        direct: bool = typer.Option(False, "--direct", help="Connect straight to the worker's SSH port instead of "
                                    "through the berth server")) -> None:
    """Open a shell in a session (or run a command), as its user, in its workspace."""
    view = run(lambda c: c.session(session_id))
    argv, env = guard(lambda: ssh_argv(view, command or [], tty, direct))
    os.execvpe(argv[0], argv, env)


def _host_alias(view: SessionView) -> str:
    return "berth-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", view.name).strip("-")


def _config_block(view: SessionView, direct: bool) -> str:
    pin_host_key(view, direct)
    names = dict.fromkeys([_host_alias(view), host_key_alias(view)])  # by name, and by id (names may repeat)
    if direct:
        route = [f"    HostName {view.ssh.host}", f"    Port {view.ssh.port}"]
    else:
        route = [f"    HostName {host_key_alias(view)}", f"    ProxyCommand {proxy_command(view)}",
                 f"    HostKeyAlias {host_key_alias(view)}"]
    return "\n".join([
        f"Host {' '.join(names)}", *route, f"    User {view.ssh.user}", f"    IdentityFile {ssh_identity()}",
        f"    UserKnownHostsFile {known_hosts_path()}", "    StrictHostKeyChecking yes",
        f"    # session {view.id}; password: `berth sessions show {view.id}`",
    ])


def ssh_config(path: Path = typer.Option(Path("~/.ssh/config"), help="SSH config file to update"),
               direct: bool = typer.Option(False, "--direct", help="Entries connect straight to the workers' SSH ports "
                                           "instead of through the berth server")) -> None:
    """Write `Host berth-<name>` entries for your running sessions into ~/.ssh/config (VS Code Remote-SSH can use
    them); they reach the sessions through the berth server, so the workers' ports need not be reachable."""
    views = run(lambda c: c.sessions(status=["active", "idle"]))
    path = path.expanduser()
    blocks = [_config_block(view, direct) for view in views if view.ssh is not None]
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = pattern.sub("", text).rstrip("\n")
    managed = "\n".join([BEGIN, *blocks, END]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text((text + "\n\n" if text else "") + managed)
    path.chmod(0o600)
    err.print(f"wrote {len(blocks)} host entr{'y' if len(blocks) == 1 else 'ies'} to {escape(str(path))}: "
              + ", ".join(_host_alias(v) for v in views if v.ssh))
