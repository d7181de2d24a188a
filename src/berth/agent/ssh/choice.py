"""Which kind of SSH server a session gets, and why (one line for the console).

Root agents: OpenSSH, or Dropbear when asked for or when sshd is missing. Non-root agents: Dropbear when it
can check passwords and hand out ptys unprivileged here, else the built-in server."""

from __future__ import annotations

import grp
import os

from .dropbear import DROPBEAR
from .openssh import SSHD

SHADOW = "/etc/shadow"
MOUNTS = "/proc/self/mounts"
PTMX = "/dev/ptmx"


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


def choose_kind(want_dropbear: bool, is_root: bool) -> tuple[str, str]:
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
