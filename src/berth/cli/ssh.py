"""`berth ssh ID` and `berth ssh-config`: log in with the pinned host key, your berth key, or the session password."""

from __future__ import annotations

import os
import re
import stat
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


def pin_host_key(view: SessionView) -> Path:
    """Record the session's host key so ssh verifies it (StrictHostKeyChecking=yes)."""
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = f"[{view.ssh.host}]:{view.ssh.port}"
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


def ssh_argv(view: SessionView, command: list[str], tty: bool | None) -> tuple[list[str], dict[str, str]]:
    if view.ssh is None:
        raise Conflict(f"session {view.id} is {view.status.value}: no SSH server to connect to")
    known = pin_host_key(view)
    argv = ["ssh", "-p", str(view.ssh.port), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "LogLevel=ERROR"]
    if ssh_identity().exists():
        argv += ["-i", str(ssh_identity())]
    if tty:
        argv.append("-t")
    argv.append(f"{view.ssh.user}@{view.ssh.host}")
    if command:
        argv += ["--", *command]
    env = dict(os.environ, SSH_ASKPASS=str(askpass_script()), SSH_ASKPASS_REQUIRE="force", BERTH_SSH_PASSWORD=view.ssh.password)
    return argv, env


def ssh(session_id: str, command: Optional[list[str]] = typer.Argument(None, help="Command to run instead of a shell (after --)"),
        tty: Optional[bool] = typer.Option(None, "--tty/--no-tty", "-t", help="Force a terminal")) -> None:
    """Open a shell in a session (or run a command), as its user, in its workspace."""
    view = run(lambda c: c.session(session_id))
    argv, env = guard(lambda: ssh_argv(view, command or [], tty))
    os.execvpe(argv[0], argv, env)


def _host_alias(view: SessionView) -> str:
    return "berth-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", view.name).strip("-")


def ssh_config(path: Path = typer.Option(Path("~/.ssh/config"), help="SSH config file to update")) -> None:
    """Write `Host berth-<name>` entries for your running sessions into ~/.ssh/config (VS Code Remote-SSH can use them)."""
    views = run(lambda c: c.sessions(status=["active", "idle"]))
    path = path.expanduser()
    blocks = []
    for view in views:
        if view.ssh is None:
            continue
        pin_host_key(view)
        blocks.append("\n".join([
            f"Host {_host_alias(view)}", f"    HostName {view.ssh.host}", f"    Port {view.ssh.port}", f"    User {view.ssh.user}",
            f"    IdentityFile {ssh_identity()}", f"    UserKnownHostsFile {known_hosts_path()}", "    StrictHostKeyChecking yes",
            f"    # session {view.id}; password: `berth sessions show {view.id}`",
        ]))
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = pattern.sub("", text).rstrip("\n")
    managed = "\n".join([BEGIN, *blocks, END]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text((text + "\n\n" if text else "") + managed)
    path.chmod(0o600)
    err.print(f"wrote {len(blocks)} host entr{'y' if len(blocks) == 1 else 'ies'} to {escape(str(path))}: "
              + ", ".join(_host_alias(v) for v in views if v.ssh))
