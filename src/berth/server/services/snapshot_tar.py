"""A snapshot as a tar download (the dashboard's Download link and the API's `/tar`): the manifest, the location
table and the snapshot's pack keys are read up front, then `workspace.tarstream` reads the packs straight
from the store as the answer streams. No database session is held while it streams. Who may download: the
caller of this module already asked `access.readable_snapshot` (project viewers, like the CLI's download).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import WorkspaceError
from berth.server.db.models import Session, Snapshot, SnapshotPack, WorkspacePack
from berth.workspace import manifest as mf
from berth.workspace.format import FormatError, decode_locations
from berth.workspace.tarstream import tar_stream

from . import workspaces
from .store import WorkspaceStore

log = logging.getLogger("berth.server")
MEDIA_TYPE = "application/x-tar"


@dataclass
class SnapshotTar:
    name: str  # <session name>-<snapshot id>, made safe for a file name: the tar's top directory too
    blocks: Iterator[bytes]

    @property
    def disposition(self) -> str:
        return f"attachment; filename=\"{self.name}.tar\"; filename*=UTF-8''{quote(self.name + '.tar', safe='')}"


def file_name(session_name: str, snapshot_id: str) -> str:
    """Letters, digits, '.', '_' and '-' only: safe in a header, on any file system, and as a tar member name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", session_name).strip("._-")[:100] or "session"
    return f"{stem}-{snapshot_id}"


async def snapshot_tar(db: AsyncSession, store: WorkspaceStore, snap: Snapshot) -> SnapshotTar:
    session = await db.get(Session, snap.session_id)
    keys = {str(pack_id): key for pack_id, key in await db.execute(
        select(WorkspacePack.id, WorkspacePack.key).join(SnapshotPack, SnapshotPack.pack_id == WorkspacePack.id)
        .where(SnapshotPack.snapshot_id == snap.id))}
    manifest_data = await workspaces.manifest_bytes(store, snap)
    table = await workspaces.manifest_bytes(store, snap, locations=True)
    try:
        manifest = await asyncio.to_thread(mf.decode, manifest_data)
        locations = await asyncio.to_thread(decode_locations, table)
    except FormatError as exc:
        raise WorkspaceError(f"snapshot {snap.id}: its location table does not parse: {exc}") from None
    del manifest_data, table

    def read(pack: str, ranges: list[tuple[int, int]]) -> bytes:
        key = keys.get(pack)
        if key is None:
            raise WorkspaceError(f"snapshot {snap.id} has no pack {pack[:12]}")
        try:
            return store.read_ranges(key, ranges)
        except FileNotFoundError:
            raise WorkspaceError(f"pack {pack[:12]} of snapshot {snap.id} is missing from the store") from None

    name = file_name(session.name, snap.id)
    return SnapshotTar(name, _logged(tar_stream(manifest, locations, read, top=name), snap.id))


def _logged(blocks: Iterator[bytes], snapshot_id: str) -> Iterator[bytes]:
    """Past the first byte an error can only cut the answer short (the client sees an incomplete download);
    the log says why."""
    try:
        yield from blocks
    except WorkspaceError as exc:
        log.error("download of snapshot %s cut short: %s", snapshot_id, exc.message)
        raise
