"""The session user inside a container: its passwd, group and shadow entries, written as container root with
nothing but ``sh``, and the container's main process.

With Podman the host id of container root is chosen before the container runs, so pid 1 writes the entries at
boot, reading the password hash from a boot dir only container root can read (``boot_dir``), and marks the end
(``READY``, seen from the worker through ``/proc/<pid>/root``): no exec, which costs ~0.2 s of CPU here. With
Docker the mapping is only known once the container runs (``container_userns``), so the entries are written by
an exec after that check (``exec_argv`` + the hash on stdin). The hash never goes into argv.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BOOT_DIR = "/run/berth-boot"          # in the container, read-only, container root's: the hash at boot
READY = "/run/berth-user-ready"       # made by pid 1 once the entries are written
HASH_FILE = "hash"

# Writes the session user's entries as container root: $1 name, $2 id, $3 home, $4 days since epoch; the
# password hash on stdin (never in argv). Any entry with that name or id is replaced (images often have a 1000).
ADD_USER = r"""
set -ef
name=$1 id=$2 home=$3 today=$4 nl='
'
IFS= read -r hash || true
shell=/bin/sh
[ -x /bin/bash ] && shell=/bin/bash
drop() {
  f=$1 by_id=$2 kept=
  [ -f "$f" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    IFS=:
    set -- $line
    IFS=" "
    [ "$1" = "$name" ] && continue
    [ "$by_id" = 1 ] && [ "${3:-}" = "$id" ] && continue
    kept="$kept$line$nl"
  done < "$f"
  printf '%s' "$kept" > "$f"
}
umask 022
drop /etc/passwd 1
printf '%s:x:%s:%s:berth session:%s:%s\n' "$name" "$id" "$id" "$home" "$shell" >> /etc/passwd
drop /etc/group 1
printf '%s:x:%s:\n' "$name" "$id" >> /etc/group
umask 077
drop /etc/shadow 0
[ -n "$hash" ] && printf '%s:%s:%s:0:99999:7:::\n' "$name" "$hash" "$today" >> /etc/shadow
umask 022  # the X servers' socket dir, root's and sticky as a booted system makes it (a desktop's Xvnc uses it)
{ mkdir -p /tmp/.X11-unix && chmod 1777 /tmp/.X11-unix; } 2>/dev/null || true
exit 0
"""

# pid 1: stays up, ends on TERM saying so (its log is what the console shows of a container that died), and
# reaps the orphans of exec'd processes (`wait` reaps any child).
_STAY_UP = ("trap 'echo \"berth: the container got SIGTERM\"; exit 143' TERM; "
            "trap 'exit 130' INT; if command -v sleep >/dev/null 2>&1; then "
            "while :; do sleep 86400 & wait $!; done; else while read -r _; do :; done; fi")


def entry_args(name: str, uid: int, home: Path) -> list[str]:
    """ADD_USER's arguments (nothing secret)."""
    return [name, str(uid), str(home), str(int(time.time() // 86400))]


def main_command(boot_user: list[str] | None) -> list[str]:
    """pid 1's argv; with ``boot_user`` (``entry_args``) it first writes the session user's entries from the
    boot dir, then marks READY (or exits 3 saying why: the session fails with the container's last lines)."""
    if boot_user is None:
        return ["/bin/sh", "-c", _STAY_UP]
    failed = "echo 'berth: could not write the session user entries (/etc/passwd, /etc/group, /etc/shadow)'"
    boot = (f"( {ADD_USER} ) < {BOOT_DIR}/{HASH_FILE} || {{ {failed}; exit 3; }}; "
            f"mkdir -p /run 2>/dev/null; : > {READY}; ")
    return ["/bin/sh", "-c", boot + _STAY_UP, "sh", *boot_user]


def write_boot_dir(path: Path, password_hash: str, owner: int) -> None:
    """The boot dir on the worker: container root's (``owner``, the host id it maps to), 0700 and 0600."""
    os.mkdir(path, 0o700)
    os.chown(path, owner, owner)
    fd = os.open(path / HASH_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password_hash + "\n")
    os.chown(path / HASH_FILE, owner, owner)


def exec_script(boot_user: list[str]) -> list[str]:
    """The argv (inside the container) that writes the entries by exec, the hash on stdin."""
    return ["/bin/sh", "-c", ADD_USER, "sh", *boot_user]

