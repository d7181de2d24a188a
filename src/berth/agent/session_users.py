"""(root) Per-session system users: created with ids never used before on this host, removed with their home locked.

Nothing of a stopped session may reach a later one. ``userdel`` keeps files and ``useradd`` hands out the
lowest free uid again, so a new session user could own an old session's home or its files in /tmp. Here
every session user gets a fresh uid and gid above every id seen so far: a high-water mark kept in the homes
directory (root's, shared by every berth agent on the host that uses it), the passwd and group databases,
and the owners of the homes already there (stale homes of another instance included). A removed session's
home is handed to root (0700) before its user is deleted: its snapshot is what persists for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import os
import pwd
from pathlib import Path

from berth.errors import SetupFailed
from berth.redaction import redact

from .processes import kill_scope
from .proctable import Scope
from .run_as import RunAs
from .setup.commands import run_command

GECOS = "berth session"
FIRST_ID = 3_000_000  # above distribution ranges and the usual /etc/subuid container ranges
_HIGH_WATER = ".berth-id-high-water"
_ADMIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


async def _admin(argv: list[str], stdin: bytes | None = None) -> tuple[int, list[str]]:
    """Run a shadow-utils command, retrying briefly when another session holds /etc/passwd's lock."""
    for _ in range(5):
        status, tail = await run_command(argv, env=_ADMIN_ENV, stdin=stdin)
        if status == 0 or not any("cannot lock" in line or "try again later" in line for line in tail):
            break
        await asyncio.sleep(0.2)
    return status, tail


def _highest_id_in_use(homes_dir: Path, first: int) -> int:
    ids = [first - 1]
    ids += [p.pw_uid for p in pwd.getpwall()] + [g.gr_gid for g in grp.getgrall()]
    with contextlib.suppress(OSError):
        for entry in os.scandir(homes_dir):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                ids += [st.st_uid, st.st_gid]
    return max(i for i in ids if i < 2**31 - 1)


def allocate_id(homes_dir: Path, first: int = FIRST_ID) -> int:
    """An id (used as both uid and gid) no user, group or home on this host has had since berth began here."""
    homes_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(homes_dir / _HIGH_WATER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # concurrent supervisors, and other agents sharing the homes dir
        try:
            high = int(f.read().strip() or 0)
        except ValueError:
            high = 0
        new = max(first, high + 1, _highest_id_in_use(homes_dir, first) + 1)
        f.seek(0)
        f.truncate()
        f.write(f"{new}\n")
        f.flush()
        os.fsync(f.fileno())
    return new


async def create_session_user(name: str, home: Path, password: str, *, first_id: int = FIRST_ID) -> RunAs:
    """Create (or, for the same session again, refresh) a session's system user, set its password, make its home (0750).

    A home that already exists and is not this user's is never adopted."""
    if "\n" in password or "\r" in password:
        raise SetupFailed("the session password must be a single line")
    home = Path(home)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is not None and entry.pw_gecos != GECOS:  # never take over (and re-password) a real user
        raise SetupFailed(f"user {name} already exists and is not a berth session user")
    if entry is None:
        if os.path.lexists(home):
            raise SetupFailed(f"refusing to adopt {home}: it exists already (a stale home of another session)")
        new_id = await asyncio.to_thread(allocate_id, home.parent, first_id)
        status, tail = await _admin(["groupadd", "--gid", str(new_id), name])
        if status:
            raise SetupFailed(f"could not create the group of session user {name}: " + "\n".join(tail))
        status, tail = await _admin(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash",
                                     "--uid", str(new_id), "--gid", str(new_id), "--no-user-group", "--no-log-init",
                                     "--comment", GECOS, name])
        if status:
            await _admin(["groupdel", name])
            raise SetupFailed(f"could not create session user {name}: " + "\n".join(tail))
    elif entry.pw_dir != str(home):
        await _admin(["usermod", "--home", str(home), name])
    # The password goes through chpasswd's stdin: argv is visible to every user on the host.
    status, tail = await _admin(["chpasswd"], stdin=f"{name}:{password}\n".encode())
    if status:
        raise SetupFailed(f"could not set the password of {name}: " + redact("\n".join(tail), [password]))
    entry = pwd.getpwnam(name)
    try:
        os.mkdir(home, 0o750)
    except FileExistsError:
        st = os.lstat(home)
        if st.st_uid != entry.pw_uid or not os.path.isdir(home) or os.path.islink(home):
            raise SetupFailed(f"refusing to adopt {home}: it is not the home of {name}") from None
    os.chown(home, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chmod(home, 0o750, follow_symlinks=False)
    return RunAs(name, entry.pw_uid, entry.pw_gid, home)


def lock_home(home: Path, uid: int) -> bool:
    """Hand a stopped session's home to root, 0700, so nothing in it is reachable by anyone else (a later
    user with any id, or other sessions). Only a real directory owned by `uid` is touched."""
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return False
    if not os.path.isdir(home) or os.path.islink(home) or st.st_uid != uid:
        return False
    os.chown(home, 0, 0, follow_symlinks=False)
    os.chmod(home, 0o700, follow_symlinks=False)
    return True


async def remove_session_user(name: str) -> None:
    """Kill the user's processes, lock its home (kept, root's), delete the user and its group."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    if entry.pw_uid == 0 or entry.pw_gecos != GECOS:  # never delete a user we did not create
        raise SetupFailed(f"refusing to remove user {name}: not a berth session user")
    tail: list[str] = []
    for _ in range(3):
        await asyncio.to_thread(kill_scope, Scope(uids=frozenset({entry.pw_uid})))
        await asyncio.to_thread(lock_home, Path(entry.pw_dir), entry.pw_uid)
        status, tail = await _admin(["userdel", name])
        if status in (0, 6):  # 6: already gone
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                await _admin(["groupdel", name])
            return
        if status != 8:  # 8: still has processes (one appeared after the kill): kill again
            break
    raise SetupFailed(f"could not remove session user {name}: " + "\n".join(tail))
