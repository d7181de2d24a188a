"""Files only their owner may read: directories 0700 and files 0600 whatever the process umask, and the
tightening of what an older berth (or a loose umask) left readable by other users of the machine.

Shared by the server (data dir, database, keys, snapshot store), the agent (identity, session dirs) and
the CLI (saved credentials).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_OTHERS = 0o077  # group and other permission bits
_PUBLIC_PARENT = 0o755  # what `mkdir -p` gives under the usual umask


def ensure_private_dir(path: str | os.PathLike, *, private_parents: bool = False) -> Path:
    """`path` as a directory; created here, it is 0700. Missing parents are created 0755 (like `mkdir -p`
    under the usual umask, so that a sibling such as the agent's homes dir stays reachable by session
    users), or 0700 with `private_parents`. An existing directory is left as it is: see `tighten`."""
    path = Path(path)
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        mode = PRIVATE_DIR if d == path or private_parents else _PUBLIC_PARENT
        try:
            os.mkdir(d, mode)
        except FileExistsError:  # made at the same moment by someone else, who sets its mode
            continue
        os.chmod(d, mode)  # mkdir's mode is cut by the umask: set it exactly
    return path


def open_private(path: str | os.PathLike, mode: str = "wb", *, exclusive: bool = False) -> IO:
    """Open `path` for writing as a 0600 file, whatever the umask and whatever mode an existing file had.

    `mode`: "wb"/"w" (truncate) or "ab"/"a" (append); `exclusive`: fail if it exists (O_EXCL)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    if exclusive:
        flags |= os.O_EXCL
    flags |= os.O_APPEND if mode.startswith("a") else os.O_TRUNC
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def tighten(paths: Iterable[str | os.PathLike]) -> int:
    """Remove group and other access from each existing path (symlinks are skipped, never followed);
    the owner's own bits stay. Returns how many paths were changed."""
    changed = 0
    for p in paths:
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & _OTHERS:
            continue
        os.chmod(p, stat.S_IMODE(st.st_mode) & ~_OTHERS)
        changed += 1
    return changed


def tighten_tree(root: str | os.PathLike) -> int:
    """`tighten` for `root` and everything under it (symlinks are not followed). Returns the count changed."""
    if not os.path.isdir(root):
        return tighten([root])
    changed = tighten([root])
    for dirpath, dirnames, filenames in os.walk(root):
        changed += tighten(os.path.join(dirpath, name) for name in (*dirnames, *filenames))
    return changed
