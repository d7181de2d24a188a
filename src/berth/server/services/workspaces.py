"""Workspace snapshots on the server: the chunk index, pack uploads, commits, retention and garbage
collection (who may read or write them: `access`).

The database holds the chunk index (chunk id -> pack, offset) per project and one row per complete
snapshot; the object store holds packs (``packs/<project>/…``) and, per snapshot, its manifest and a
location table (``snapshots/<project>/<ts>-<id>.manifest|.locations``). A snapshot row is inserted
last, after every chunk it references is known to be stored, so readers never see a partial one.

Garbage collection is mark-and-sweep with a grace period: a pack may go once no snapshot references it
(``snapshot_packs``; the foreign key makes the database refuse to delete a referenced pack) and it has
not been uploaded or reported present for ``workspace_gc_grace_s`` (an upload in progress may still
commit it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Conflict, InvalidInput, NotFound, WorkspaceError
from berth.ids import new_id
from berth.server.db.models import Project, Session, Snapshot, SnapshotPack, WorkspacePack, utcnow
from berth.settings import ServerSettings
from berth.workspace import manifest as mf
from berth.workspace.format import (
    MAX_PACK_BYTES, FormatError, Location, LocationTableBuilder, decode_chunk, pack_digest, pack_header_length, parse_pack,
)
from berth.workspace.schemas import GcReport, PackStored, SnapshotView, WorkspaceState

from . import access
from .access import Principal
from .store import WorkspaceStore

log = logging.getLogger("berth.server")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_BATCH = 2000  # ids per IN (...) query: well under SQLite's variable limit
MAX_READ_BYTES = 64 << 20
MAX_VERIFY_BYTES = 256 << 20  # per request: more unverified chunks are reported missing (and re-sent)


def store_url(settings: ServerSettings) -> str:
    return settings.store_url or str(settings.data_dir / "store")


def _batches(items: list, size: int = _BATCH):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- snapshots ---------------------------------------------------------------------------------

async def view(db: AsyncSession, snap: Snapshot) -> SnapshotView:
    project = await db.get(Project, snap.project_id)
    return SnapshotView(id=snap.id, session_id=snap.session_id, project=project.name, parent_id=snap.parent_id,
                        created_at=snap.created_at, files=snap.files, bytes_total=snap.bytes_total,
                        bytes_new=snap.bytes_stored_new, status=snap.status)


async def latest(db: AsyncSession, session_id: str) -> Snapshot | None:
    return (await db.execute(select(Snapshot).where(Snapshot.session_id == session_id)
                             .order_by(Snapshot.created_at.desc(), Snapshot.id).limit(1))).scalar_one_or_none()


async def state(db: AsyncSession, row: Session) -> WorkspaceState:
    project = await db.get(Project, row.project_id)
    snap = await latest(db, row.id)
    return WorkspaceState(session_id=row.id, project=project.name, restored_from=row.restored_from,
                          latest=await view(db, snap) if snap else None)


async def list_snapshots(db: AsyncSession, principal: Principal, session_id: str | None, project: str | None,
                         limit: int) -> list[SnapshotView]:
    query = select(Snapshot).order_by(Snapshot.created_at.desc(), Snapshot.id).limit(limit)
    access.require_snapshot_lister(principal, session_id)
    if session_id:
        await access.readable_session(db, principal, session_id)
        query = query.where(Snapshot.session_id == session_id)
    else:
        visible = await access.visible_project_ids(db, principal.require_user())
        if visible is not None:
            query = query.where(Snapshot.project_id.in_(visible))
    if project:
        query = query.join(Project, Project.id == Snapshot.project_id).where(Project.name == project)
    return [await view(db, s) for s in (await db.execute(query)).scalars()]


# --- the chunk index ---------------------------------------------------------------------------
# A row per chunk (tens of thousands per snapshot), so it is read and written with plain driver SQL:
# the ORM's per-row bookkeeping cost more than the database did.
#
# The server does not hash uploads (that would double the CPU cost of every sync). A chunk is trusted
# by the session that uploaded it; before another session may rely on it (deduplication), the server
# verifies it from the store. So no session can plant wrong content under a chunk id that other
# sessions of the project will reference.

_ROW = 'c.chunk_id, c.pack_id, c.session_id, c.verified, p.key, c."offset", c.length, c.raw_length, c.codec'


def _check_ids(ids: list[str]) -> None:
    for cid in ids:
        if not _HEX64.match(cid):
            raise InvalidInput("ids: every chunk id is a SHA-256 in lower-case hex", field="ids")


async def _driver(db: AsyncSession) -> tuple:
    conn = await db.connection()
    return conn, "?" if conn.dialect.paramstyle == "qmark" else "%s"


async def _chunk_rows(db: AsyncSession, project_id: int, ids: list[str]) -> list:
    conn, ph = await _driver(db)
    rows = []
    for batch in _batches(ids):
        sql = (f"SELECT {_ROW} FROM workspace_chunks c JOIN workspace_packs p ON p.id = c.pack_id "
               f"WHERE c.project_id = {ph} AND c.chunk_id IN ({', '.join([ph] * len(batch))})")
        rows += (await conn.exec_driver_sql(sql, (project_id, *batch))).all()
    return rows


async def _verify(db: AsyncSession, store: WorkspaceStore, project_id: int, rows: list) -> set[str]:
    """Check other sessions' chunks against their ids (reading at most MAX_VERIFY_BYTES); the good ones
    become trusted by everyone."""
    by_key: dict[str, list] = {}
    budget = MAX_VERIFY_BYTES
    for r in rows:
        if r.raw_length <= budget:
            budget -= r.raw_length
            by_key.setdefault(r.key, []).append(r)

    def check() -> list[str]:
        good = []
        for key, group in by_key.items():
            group.sort(key=lambda r: r.offset)
            try:
                data = memoryview(store.read_ranges(key, [(r.offset, r.length) for r in group]))
            except FileNotFoundError:
                continue
            pos = 0
            for r in group:
                if decode_chunk(r.chunk_id, r.codec, data[pos:pos + r.length], r.raw_length) is not None:
                    good.append(r.chunk_id)
                else:
                    log.warning("workspace chunk %s in %s does not match its id", r.chunk_id, key)
                pos += r.length
        return good

    good = await asyncio.to_thread(check)
    conn, ph = await _driver(db)
    for batch in _batches(good):
        await conn.exec_driver_sql(f"UPDATE workspace_chunks SET verified = TRUE WHERE project_id = {ph} AND "
                                   f"chunk_id IN ({', '.join([ph] * len(batch))})", (project_id, *batch))
    return set(good)


async def missing(db: AsyncSession, store: WorkspaceStore, row: Session, ids: list[str]) -> list[str]:
    """The ids the project's store lacks (for this session: see above). Packs holding the others are
    touched: GC leaves them alone for a grace period, long enough for the asking sync to commit."""
    _check_ids(ids)
    present: set[str] = set()
    packs: set[int] = set()
    others = []
    for r in await _chunk_rows(db, row.project_id, sorted(set(ids))):
        if r.verified or r.session_id == row.id:
            present.add(r.chunk_id)
            packs.add(r.pack_id)
        else:
            others.append(r)
    if others:
        good = await _verify(db, store, row.project_id, others)
        present |= good
        packs |= {r.pack_id for r in others if r.chunk_id in good}
    for batch in _batches(sorted(packs)):
        await db.execute(update(WorkspacePack).where(WorkspacePack.id.in_(batch)).values(touched_at=utcnow()))
    return [cid for cid in ids if cid not in present]


async def store_pack(db: AsyncSession, store: WorkspaceStore, row: Session, digest: str, body: AsyncIterator[bytes]) -> PackStored:
    """Stream a pack into the store, check its header, index its chunks. Idempotent by digest."""
    if not _HEX64.match(digest):
        raise InvalidInput("digest: a SHA-256 in lower-case hex", field="digest")
    existing = (await db.execute(select(WorkspacePack).where(
        WorkspacePack.project_id == row.project_id, WorkspacePack.session_id == row.id, WorkspacePack.digest == digest))).scalar_one_or_none()
    if existing is not None:  # a retried upload: nothing to do
        existing.touched_at = utcnow()
        return PackStored(digest=digest, chunks=0, created=False)
    await db.commit()  # hold no transaction while the body streams in
    key = f"packs/{row.project_id}/{digest[:2]}/{digest}-{int(time.time())}-{new_id(4)}.pack"
    upload = await asyncio.to_thread(store.upload, key)
    try:
        head, need, parts, buffered, total = bytearray(), None, [], 0, 0
        async for part in body:
            total += len(part)
            if total > MAX_PACK_BYTES:
                raise InvalidInput(f"pack: larger than {MAX_PACK_BYTES >> 20} MiB")
            if need is None or len(head) < need:
                head += part
                need = pack_header_length(head)
            parts.append(part)
            buffered += len(part)
            if buffered >= 4 << 20:  # written in a thread every few MiB: the event loop never waits on the disk
                await asyncio.to_thread(upload.write, parts)
                parts, buffered = [], 0
        await asyncio.to_thread(upload.write, parts)
        try:
            chunks = parse_pack(head, total)
        except FormatError as exc:
            raise InvalidInput(f"pack: {exc}") from None
        if pack_digest(head) != digest:
            raise InvalidInput("pack: its name is not the SHA-256 of its header")
        await asyncio.to_thread(upload.commit)
    except BaseException:
        await asyncio.to_thread(upload.abort)
        raise
    now = utcnow()
    pack_id = (await db.execute(_insert_ignoring_duplicates(db, WorkspacePack).values(
        project_id=row.project_id, session_id=row.id, digest=digest, key=key, size=total, created_at=now, touched_at=now)
        .returning(WorkspacePack.id))).scalar_one_or_none()
    if pack_id is None:  # the same pack arrived twice at once; the other upload won
        await asyncio.to_thread(store.delete, key)
        return PackStored(digest=digest, chunks=0, created=False)
    # A chunk another session uploaded and nobody verified is replaced by ours: see the note above.
    conn, ph = await _driver(db)
    sql = (f'INSERT INTO workspace_chunks (project_id, chunk_id, pack_id, "offset", length, raw_length, codec, session_id, verified) '
           f"VALUES ({', '.join([ph] * 8)}, FALSE) ON CONFLICT (project_id, chunk_id) DO UPDATE SET pack_id = excluded.pack_id, "
           '"offset" = excluded."offset", length = excluded.length, raw_length = excluded.raw_length, codec = excluded.codec, '
           "session_id = excluded.session_id WHERE workspace_chunks.verified = FALSE AND workspace_chunks.session_id <> excluded.session_id")
    rows = [(row.project_id, c.id, pack_id, c.offset, c.length, c.raw_length, c.codec, row.id) for c in chunks]
    for batch in _batches(rows, 5000):
        await conn.exec_driver_sql(sql, batch)
    return PackStored(digest=digest, chunks=len(chunks), created=True)


def _insert_ignoring_duplicates(db: AsyncSession, table):
    if db.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


# --- commit and retention ----------------------------------------------------------------------

def _locations_key(manifest_key: str) -> str:
    return manifest_key + ".locations"


async def receive(db: AsyncSession, store: WorkspaceStore, row: Session, snapshot_id: str, parent_id: str | None,
                  read_manifest: Callable[[], Awaitable[bytes]], keep: int) -> tuple[SnapshotView, list[str]]:
    """Read a manifest and commit its snapshot (`commit`), holding no transaction while the manifest streams in.
    Returns the snapshot and the store keys to delete once the answer is sent."""
    await db.commit()
    manifest_bytes = await read_manifest()
    snap, dropped = await commit(db, store, row, snapshot_id, parent_id, manifest_bytes, keep)
    result = await view(db, snap)
    await db.commit()  # the dropped snapshots' rows are gone before their store objects are deleted
    return result, dropped


async def commit(db: AsyncSession, store: WorkspaceStore, row: Session, snapshot_id: str, parent_id: str | None,
                 manifest_bytes: bytes, keep: int) -> tuple[Snapshot, list[str]]:
    """Insert a snapshot once every chunk of its manifest is stored. Returns it and the store keys of
    the snapshots retention dropped (to delete after the transaction commits)."""
    if not re.fullmatch(r"[0-9a-zA-Z]{8,32}", snapshot_id):
        raise InvalidInput("snapshot_id: 8 to 32 letters or digits", field="snapshot_id")
    done = await db.get(Snapshot, snapshot_id)
    if done is not None:
        if done.session_id != row.id:
            raise Conflict(f"snapshot id {snapshot_id} is taken")
        return done, []  # a retried commit
    try:
        manifest = await asyncio.to_thread(mf.decode, manifest_bytes)
    except WorkspaceError as exc:
        raise InvalidInput(f"manifest: {exc.message}") from None
    raw_ids = bytes.fromhex(manifest.chunks)
    wanted = {raw_ids[i:i + 32] for i in range(0, len(raw_ids), 32)}
    parent_table = None
    parent = await db.get(Snapshot, parent_id) if parent_id else None
    if parent is not None and parent.project_id == row.project_id and parent.session_id in (row.id, row.restored_from):
        # Chunks the parent had need no lookup: its location table says where they are, and its
        # snapshot_packs rows keep those packs alive.
        try:
            parent_table = await asyncio.to_thread(store.get, _locations_key(parent.manifest_key))
        except FileNotFoundError:
            pass
    try:
        table = await asyncio.to_thread(LocationTableBuilder, parent_table, wanted)
    except FormatError:
        table = LocationTableBuilder(None, wanted)
    rows = await _chunk_rows(db, row.project_id, sorted(c.hex() for c in wanted if c not in table.records))
    others = [r for r in rows if not (r.verified or r.session_id == row.id)]
    good = await _verify(db, store, row.project_id, others) if others else set()
    for r in rows:
        if r.verified or r.session_id == row.id or r.chunk_id in good:
            table.add(bytes.fromhex(r.chunk_id), Location(str(r.pack_id), r.offset, r.length, r.raw_length, r.codec))
    absent = len(wanted) - len(table.records)
    if absent:
        raise Conflict(f"{absent} chunks of this snapshot are not in the store (deleted or never uploaded): sync again")
    used = sorted(int(p) for p in table.packs_used())
    packs: dict[int, int] = {}
    for batch in _batches(used):
        packs.update((await db.execute(select(WorkspacePack.id, WorkspacePack.size).where(
            WorkspacePack.project_id == row.project_id, WorkspacePack.id.in_(batch)))).all())
    if len(packs) != len(used):
        raise Conflict("a pack of this snapshot was just deleted: sync again")
    # New bytes: the packs no other snapshot references yet (what this sync added to the store).
    seen: set[int] = set()
    for batch in _batches(sorted(packs)):
        seen.update((await db.execute(select(SnapshotPack.pack_id).where(SnapshotPack.pack_id.in_(batch)).distinct())).scalars())
    new_bytes = sum(size for pack_id, size in packs.items() if pack_id not in seen)
    pack_ids = sorted(packs)

    key = f"snapshots/{row.project_id}/{int(time.time())}-{snapshot_id}.manifest"
    encoded = table.encode()

    def write():
        store.put(_locations_key(key), encoded)
        store.put(key, manifest_bytes)

    await asyncio.to_thread(write)
    snap = Snapshot(id=snapshot_id, session_id=row.id, project_id=row.project_id, parent_id=parent_id, created_at=utcnow(),
                    files=manifest.files, bytes_total=manifest.bytes_total, bytes_stored_new=new_bytes, manifest_key=key,
                    status="complete")
    db.add(snap)
    await db.flush()
    for batch in _batches(pack_ids):
        await db.execute(SnapshotPack.__table__.insert(), [{"snapshot_id": snapshot_id, "pack_id": p} for p in batch])
    return snap, await _prune(db, row.id, keep)


async def _prune(db: AsyncSession, session_id: str, keep: int) -> list[str]:
    old = list((await db.execute(select(Snapshot).where(Snapshot.session_id == session_id)
                                 .order_by(Snapshot.created_at.desc(), Snapshot.id).offset(keep))).scalars())
    keys = []
    for snap in old:
        keys += [snap.manifest_key, _locations_key(snap.manifest_key)]
        await db.execute(delete(SnapshotPack).where(SnapshotPack.snapshot_id == snap.id))
        await db.delete(snap)
    return keys


# --- reads -------------------------------------------------------------------------------------

async def manifest_bytes(store: WorkspaceStore, snap: Snapshot, locations: bool = False) -> bytes:
    key = _locations_key(snap.manifest_key) if locations else snap.manifest_key
    try:
        return await asyncio.to_thread(store.get, key)
    except FileNotFoundError:
        raise NotFound(f"snapshot {snap.id}: its {'location table' if locations else 'manifest'} is missing from the store",
                       log_message=f"store object {key} missing") from None


async def read(db: AsyncSession, store: WorkspaceStore, snap: Snapshot, pack: str, ranges: list[tuple[int, int]]) -> bytes:
    if any(offset < 0 or length <= 0 for offset, length in ranges) or sum(length for _, length in ranges) > MAX_READ_BYTES:
        raise InvalidInput(f"ranges: positive lengths, at most {MAX_READ_BYTES >> 20} MiB in all", field="ranges")
    key = (await db.execute(select(WorkspacePack.key).join(SnapshotPack, SnapshotPack.pack_id == WorkspacePack.id).where(
        SnapshotPack.snapshot_id == snap.id, WorkspacePack.id == int(pack)))).scalar_one_or_none()
    if key is None:
        raise NotFound(f"snapshot {snap.id} has no pack {pack[:12]}")
    try:
        return await asyncio.to_thread(store.read_ranges, key, ranges)
    except FileNotFoundError:
        raise NotFound(f"pack {pack[:12]} is missing from the store", log_message=f"store object {key} missing") from None


# --- garbage collection ------------------------------------------------------------------------

_KEY_TIME = re.compile(r"(?:[0-9a-f]{64}-)?(\d{9,12})-")


def _key_time(key: str) -> int | None:
    """The write time in pack keys (<digest>-<ts>-<nonce>.pack) and manifest keys (<ts>-<id>.manifest)."""
    m = _KEY_TIME.match(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


async def gc(sessionmaker, store: WorkspaceStore, grace_s: float) -> GcReport:
    cutoff = utcnow() - timedelta(seconds=grace_s)
    referenced = exists().where(SnapshotPack.pack_id == WorkspacePack.id)
    deleted: list[tuple[str, int]] = []
    async with sessionmaker() as db:
        candidates = (await db.execute(select(WorkspacePack.id, WorkspacePack.key, WorkspacePack.size).where(
            WorkspacePack.touched_at < cutoff, ~referenced))).all()
        await db.commit()
        for pack_id, key, size in candidates:
            try:  # one transaction per pack; its chunks go with it (ON DELETE CASCADE)
                result = await db.execute(delete(WorkspacePack).where(
                    WorkspacePack.id == pack_id, WorkspacePack.touched_at < cutoff, ~referenced))
                await db.commit()
            except IntegrityError:  # a commit referenced it meanwhile
                await db.rollback()
                continue
            if result.rowcount:
                deleted.append((key, size))
        known = {k for (k,) in await db.execute(select(WorkspacePack.key))}
        for (k,) in await db.execute(select(Snapshot.manifest_key)):
            known |= {k, _locations_key(k)}
    for key, _ in deleted:
        await asyncio.to_thread(store.delete, key)
    # Objects no row names (a crash between store write and database commit), once past the grace period.
    orphans = 0
    limit = cutoff.timestamp()
    for prefix in ("packs", "snapshots"):
        for key in await asyncio.to_thread(store.list, prefix):
            ts = _key_time(key)
            if key not in known and ts is not None and ts < limit:
                await asyncio.to_thread(store.delete, key)
                orphans += 1
    if deleted or orphans:
        log.info("workspace gc: %d packs (%d bytes), %d orphans", len(deleted), sum(s for _, s in deleted), orphans)
    return GcReport(packs_deleted=len(deleted), bytes_freed=sum(s for _, s in deleted), orphans_deleted=orphans)
