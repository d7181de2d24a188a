"""A workspace repository in a local directory: the snapshot engine without a server.

Layout: ``packs/<digest>.pack`` (self-describing, see ``format``), ``snapshots/<id>.manifest``. The chunk
index is rebuilt from the pack headers when the store is opened. A manifest is written last, by rename,
so a snapshot exists only once everything it references is stored. Used by tests and benchmarks; the
server keeps the same packs in its own store with the index in its database.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from berth.errors import WorkspaceError
from berth.ids import new_id

from . import manifest as mf
from .format import FormatError, Location, Pack, parse_pack, subset_pack
from .restore import RestoreResult, restore_tree
from .snapshot import ParentCache, SnapshotResult, take_snapshot


def _atomic_write(path: Path, data: bytes | list) -> None:
    tmp = path.with_name(f".{path.name}.{new_id()}")
    with open(tmp, "wb") as f:
        f.writelines([data] if isinstance(data, bytes) else data)
    os.replace(tmp, path)


class LocalStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.packs = self.path / "packs"
        self.snapshots_dir = self.path / "snapshots"
        self.packs.mkdir(parents=True, exist_ok=True)
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, Location] = {}
        for pack_file in sorted(self.packs.glob("*.pack")):
            self._index_pack(pack_file)

    def _index_pack(self, pack_file: Path) -> None:
        with open(pack_file, "rb") as f:
            head = f.read(12)
            if len(head) < 12:
                return
            (count,) = struct.unpack_from("<I", head, 8)
            f.seek(0)
            header = f.read(12 + 41 * count)
        try:
            chunks = parse_pack(header, pack_file.stat().st_size)
        except FormatError:
            return
        for c in chunks:
            self.index.setdefault(c.id, Location(pack_file.stem, c.offset, c.length, c.raw_length, c.codec))

    # --- PackSink --------------------------------------------------------------------------------
    def put_pack(self, pack: Pack) -> None:
        missing = {c.id for c in pack.chunks if c.id not in self.index}
        if not missing:
            return
        if len(missing) < len(pack.chunks):
            pack = subset_pack(pack, missing)
        _atomic_write(self.packs / f"{pack.digest}.pack", pack.parts)
        for c in pack.chunks:
            self.index.setdefault(c.id, Location(pack.digest, c.offset, c.length, c.raw_length, c.codec))

    def flush(self) -> None:
        pass

    # --- snapshots -------------------------------------------------------------------------------
    def commit(self, manifest_bytes: bytes, snapshot_id: str | None = None) -> str:
        manifest = mf.decode(manifest_bytes)
        absent = [c for c in manifest.chunk_ids() if c not in self.index]
        if absent:
            raise WorkspaceError(f"cannot commit: {len(absent)} chunks are not in the store")
        snapshot_id = snapshot_id or new_id(8)
        _atomic_write(self.snapshots_dir / f"{snapshot_id}.manifest", manifest_bytes)
        return snapshot_id

    def snapshot(self, root: Path, parent: ParentCache | None = None, **kwargs) -> tuple[str, SnapshotResult]:
        result = take_snapshot(root, self, parent=parent, **kwargs)
        snapshot_id = self.commit(result.manifest)
        result.cache.snapshot_id = snapshot_id
        return snapshot_id, result

    def list(self) -> list[str]:
        return [p.stem for p in sorted(self.snapshots_dir.glob("*.manifest"), key=lambda p: p.stat().st_mtime_ns)]

    def manifest(self, snapshot_id: str) -> mf.Manifest:
        try:
            return mf.decode((self.snapshots_dir / f"{snapshot_id}.manifest").read_bytes())
        except FileNotFoundError:
            raise WorkspaceError(f"no snapshot {snapshot_id!r}") from None

    def read(self, pack: str, ranges: list[tuple[int, int]]) -> bytes:
        try:
            with open(self.packs / f"{pack}.pack", "rb") as f:
                parts = []
                for offset, length in ranges:
                    f.seek(offset)
                    parts.append(f.read(length))
        except FileNotFoundError:
            raise WorkspaceError(f"pack {pack[:12]} is missing from the store") from None
        return b"".join(parts)

    def restore(self, snapshot_id: str, dest: Path, **kwargs) -> RestoreResult:
        manifest = self.manifest(snapshot_id)
        return restore_tree(manifest, self.index, self.read, dest, **kwargs)
