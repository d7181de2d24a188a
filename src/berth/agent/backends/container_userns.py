"""A running container's user namespace as the kernel has it (its main process's uid_map and gid_map).

Podman is told which slice to use (``--uidmap``); Docker has no such flag, only the daemon's own mapping
(``userns-remap``, or ``userns = "auto"`` in containers.conf for Podman's Docker API). Either way the backend
trusts what the container really got, not what the configuration promised: it reads the maps once the
container runs and refuses root inside as root outside.
"""

from __future__ import annotations

import os
from pathlib import Path

from berth.errors import SetupFailed

from .container_cli import userns_base


def read_userns(pid: int, *, session_id: int, planned: int | None, homes: Path, own_home: Path) -> tuple[int, int]:
    """(host id of container root, ids mapped from there) for the container whose main process is `pid`.
    `session_id`: the session user's id inside, which must be mapped. Refused: container root as host root;
    a slice other than the one asked for (`planned`, Podman); a range another live session's user already has
    (Docker's userns-remap maps every container alike: two sessions would be one host user, each reading the
    other's files). A stopped session's home is root's (``lock_home``), so only live ones count."""
    try:
        uid_map, gid_map = (Path(f"/proc/{pid}/{name}").read_text() for name in ("uid_map", "gid_map"))
    except OSError as e:
        raise SetupFailed(f"cannot read the container's user namespace (process {pid}): {e.strerror or e}") from None
    base, size = userns_base(uid_map, gid_map, need=session_id)
    if planned is not None and base != planned:
        raise SetupFailed(f"the engine mapped the container's root to host uid {base}, not to the slice berth asked "
                          f"for ({planned}): refused")
    uid = base + session_id
    for home in homes.iterdir() if homes.is_dir() else ():
        if home != own_home and _owner(home) == uid:
            raise SetupFailed(f"the engine maps this container onto the same host ids as a running session's "
                              f"({home.name}): sessions would share a host user. Docker's userns-remap gives every "
                              "container the same range: run one session at a time on such a worker, or use "
                              "Podman (a slice per session)")
    return base, size


def _owner(path: Path) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None
