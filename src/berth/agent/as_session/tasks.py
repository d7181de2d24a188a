"""What the helper can do as the session user: each task takes the channel and JSON/bytes arguments.

Every path here is the session user's to control, which is the point: the kernel checks each access
with the session user's rights, so a symlink to /etc or to another session leads nowhere. The tasks
hold no secret and reach the server only through the supervisor (``channel.call``).
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from berth.agent import environment as env
from berth.workspace import manifest as mf
from berth.workspace.format import Pack, decode_locations
from berth.workspace.restore import restore_tree
from berth.workspace.snapshot import ParentCache, take_snapshot

from .helper import Channel


class _ChannelSink:
    """PackSink: each pack goes to the supervisor, which uploads it; one pack in flight while the next fills."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.in_flight: Future | None = None

    def put_pack(self, pack: Pack) -> None:
        self.flush()
        self.in_flight = self.channel.call_async("put_pack", data=b"".join(pack.parts))

    def flush(self) -> None:
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            future.result()


def snapshot(channel: Channel, *, root: str, parent: dict | None, excludes: list[str] | None,
             max_bytes: int | None) -> dict[str, Any]:
    cache = None
    if parent is not None:
        inodes = array("q")
        inodes.frombytes(parent["inodes"])
        cache = ParentCache(parent["snapshot_id"], parent["session_id"], parent["project"], parent["manifest"], inodes)
    result = take_snapshot(Path(root), _ChannelSink(channel), parent=cache, excludes=excludes, max_bytes=max_bytes,
                           emit=channel.emit)
    return {"manifest": result.manifest, "inodes": result.cache.inodes.tobytes(), "files": result.files,
            "bytes_total": result.bytes_total, "files_read": result.files_read, "bytes_read": result.bytes_read,
            "chunks_new": result.chunks_new, "bytes_new": result.bytes_new, "skipped": result.skipped}


def restore(channel: Channel, *, manifest: bytes, locations: bytes, dest: str, want_inodes: bool) -> dict[str, Any]:
    def read(pack: str, ranges: list[tuple[int, int]]) -> bytes:
        return channel.call("read", pack=pack, ranges=[list(r) for r in ranges])

    result = restore_tree(mf.decode(manifest), decode_locations(locations), read, Path(dest), progress=channel.progress,
                          want_inodes=want_inodes)
    return {"files": result.files, "bytes_total": result.bytes_total, "dropped_bits": result.dropped_bits,
            "inodes": [[path, ino, ctime] for path, (ino, ctime) in result.inodes.items()]}


def make_dirs(channel: Channel, *, paths: list[str], mode: int = 0o755) -> None:
    for path in paths:
        os.makedirs(path, mode=mode, exist_ok=True)


def write_files(channel: Channel, *, files: list[dict[str, Any]]) -> None:
    """Each {path, content, mode}: written whole to a temp file and renamed over the path (which replaces
    a symlink there rather than writing through it); parent directories created as needed."""
    for spec in files:
        path = Path(spec["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(spec["content"])
            os.chmod(tmp, spec["mode"])
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def login_files(channel: Channel, *, home: str, workspace: str, venv: str, session_id: str, wrapper: str) -> None:
    env.write_login_files(Path(home), Path(workspace), Path(venv), session_id, env.RunAs.current(Path(home)), Path(wrapper))


TASKS: dict[str, Callable[..., Any]] = {
    "snapshot": snapshot, "restore": restore, "make_dirs": make_dirs, "write_files": write_files,
    "login_files": login_files,
}
