"""Helper tasks of the snapshot engine: snapshot the workspace, restore a snapshot into it.

The helper holds no token: packs go to the supervisor (``put_pack``), which uploads them, and chunk data
comes from it (``read``). Everything else is the engine (``berth.workspace``) with the session user's rights.
"""

from __future__ import annotations

from array import array
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from berth.workspace import manifest as mf
from berth.workspace.format import Pack, decode_locations
from berth.workspace.restore import restore_tree
from berth.workspace.snapshot import ParentCache, take_snapshot


class _ChannelSink:
    """PackSink: each pack goes to the supervisor, which uploads it; one pack in flight while the next fills."""

    def __init__(self, channel):
        self.channel = channel
        self.in_flight: Future | None = None

    def put_pack(self, pack: Pack) -> None:
        self.flush()
        self.in_flight = self.channel.call_async("put_pack", data=b"".join(pack.parts))

    def flush(self) -> None:
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            future.result()


def snapshot(channel, *, root: str, parent: dict | None, excludes: list[str] | None, max_bytes: int | None) -> dict[str, Any]:
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


def restore(channel, *, manifest: bytes, locations: bytes, dest: str, want_inodes: bool) -> dict[str, Any]:
    def read(pack: str, ranges: list[tuple[int, int]]) -> bytes:
        return channel.call("read", pack=pack, ranges=[list(r) for r in ranges])

    result = restore_tree(mf.decode(manifest), decode_locations(locations), read, Path(dest), progress=channel.progress,
                          want_inodes=want_inodes)
    return {"files": result.files, "bytes_total": result.bytes_total, "dropped_bits": result.dropped_bits,
            "inodes": [[path, ino, ctime] for path, (ino, ctime) in result.inodes.items()]}
