"""Workspace snapshots: supervisors upload (missing chunks, packs, commit), users and supervisors download.

Upload order, each step idempotent so an interrupted sync resumes where it stopped: ask which chunks are
missing, PUT packs holding only those, then PUT the manifest, which makes the snapshot exist.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from fastapi.responses import StreamingResponse

from berth.errors import InvalidInput
from berth.server.services import access, snapshot_tar
from berth.server.services import workspaces as svc
from berth.server.services.store import WorkspaceStore, open_store
from berth.workspace.schemas import ChunkQuery, GcReport, MissingChunks, PackStored, ReadRequest, SnapshotView, WorkspaceState

from .deps import Admin, Caller, Db, errors

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])
_MAX_MANIFEST_BYTES = 256 << 20
_MAX_GRACE_S = 10 * 365 * 86400.0
_BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_BINARY_REPLY = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def workspace_store(request: Request) -> WorkspaceStore:
    """The workspace store, opened once per app (the API and the pages' downloads share it)."""
    store = getattr(request.app.state, "workspace_store", None)
    if store is None:
        store = request.app.state.workspace_store = open_store(svc.store_url(request.app.state.settings))
    return store


async def _body(request: Request, limit: int, what: str) -> bytearray:
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise InvalidInput(f"{what} is larger than {limit >> 20} MiB")
    return data


def _binary(data: bytes) -> Response:
    return Response(content=data, media_type="application/octet-stream")


# --- supervisor: upload ------------------------------------------------------------------------

@router.get("/sessions/{session_id}/state", response_model=WorkspaceState, responses=errors(401, 403, 404))
async def session_state(session_id: str, db: Db, principal: Caller) -> WorkspaceState:
    """The session's project (chunk namespace) and latest snapshot: where an incremental sync starts."""
    return await svc.state(db, await access.readable_session(db, principal, session_id))


@router.post("/sessions/{session_id}/missing", response_model=MissingChunks, responses=errors(401, 403, 404, 409, 422))
async def missing_chunks(session_id: str, body: ChunkQuery, db: Db, principal: Caller, request: Request) -> MissingChunks:
    """Which of these chunks the project's store lacks (send only those)."""
    row = await access.uploading_session(db, principal, session_id)
    return MissingChunks(missing=await svc.missing(db, workspace_store(request), row, body.ids))


@router.put("/sessions/{session_id}/packs/{digest}", response_model=PackStored, openapi_extra=_BINARY_BODY,
            responses=errors(401, 403, 404, 409, 422))
async def put_pack(session_id: str, digest: str, db: Db, principal: Caller, request: Request) -> PackStored:
    """Store a pack (named by the SHA-256 of its header). Re-sending a stored pack is a no-op."""
    row = await access.uploading_session(db, principal, session_id)
    return await svc.store_pack(db, workspace_store(request), row, digest, request.stream())


@router.put("/sessions/{session_id}/snapshots/{snapshot_id}", response_model=SnapshotView, openapi_extra=_BINARY_BODY,
            responses=errors(401, 403, 404, 409, 422))
async def commit_snapshot(session_id: str, snapshot_id: str, db: Db, principal: Caller, request: Request,
                          background: BackgroundTasks, parent: str | None = Query(None, max_length=32)) -> SnapshotView:
    """Commit a snapshot: its manifest (zstd JSON), the last step of a sync. 409 when a chunk is not stored."""
    row = await access.uploading_session(db, principal, session_id)
    settings = request.app.state.settings
    store = workspace_store(request)

    async def manifest() -> bytes:
        return bytes(await _body(request, _MAX_MANIFEST_BYTES, "a manifest"))

    result, dropped = await svc.receive(db, store, row, snapshot_id, parent, manifest, settings.workspace_keep)
    for key in dropped:
        background.add_task(asyncio.to_thread, store.delete, key)
    last = getattr(request.app.state, "workspace_gc_at", 0.0)
    if time.monotonic() - last > settings.workspace_gc_interval_s:
        request.app.state.workspace_gc_at = time.monotonic()
        background.add_task(svc.gc, request.app.state.sessionmaker, store, settings.workspace_gc_grace_s)
    return result


# --- listing and download ----------------------------------------------------------------------

@router.get("/snapshots", response_model=list[SnapshotView], responses=errors(401, 403, 404, 422))
async def list_snapshots(db: Db, principal: Caller, session: str | None = None, project: str | None = None,
                         limit: int = Query(100, ge=1, le=1000)) -> list[SnapshotView]:
    """Complete snapshots, newest first: of one session, or of every project you can read."""
    return await svc.list_snapshots(db, principal, session, project, limit)


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotView, responses=errors(401, 403, 404))
async def show_snapshot(snapshot_id: str, db: Db, principal: Caller) -> SnapshotView:
    return await svc.view(db, await access.readable_snapshot(db, principal, snapshot_id))


@router.get("/snapshots/{snapshot_id}/manifest", response_class=Response, responses={**errors(401, 403, 404), **_BINARY_REPLY})
async def get_manifest(snapshot_id: str, db: Db, principal: Caller, request: Request) -> Response:
    """The snapshot's manifest (zstd-compressed JSON: paths, modes, mtimes, chunk ids)."""
    snap = await access.readable_snapshot(db, principal, snapshot_id)
    return _binary(await svc.manifest_bytes(workspace_store(request), snap))


@router.get("/snapshots/{snapshot_id}/locations", response_class=Response, responses={**errors(401, 403, 404), **_BINARY_REPLY})
async def get_locations(snapshot_id: str, db: Db, principal: Caller, request: Request) -> Response:
    """Where each chunk of the snapshot is stored (pack, offset, length), in the binary format of berth.workspace.format."""
    snap = await access.readable_snapshot(db, principal, snapshot_id)
    return _binary(await svc.manifest_bytes(workspace_store(request), snap, locations=True))


@router.get("/snapshots/{snapshot_id}/tar", response_class=StreamingResponse,
            responses={**errors(401, 403, 404), 200: {"content": {snapshot_tar.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
async def download_tar(snapshot_id: str, db: Db, principal: Caller, request: Request) -> StreamingResponse:
    """The whole snapshot as a tar (pax), streamed: files, directories, symlinks, modes and mtimes (setuid/setgid
    dropped), under one directory `<session name>-<snapshot id>`."""
    snap = await access.readable_snapshot(db, principal, snapshot_id)
    return tar_response(await snapshot_tar.snapshot_tar(db, workspace_store(request), snap))


def tar_response(tar: snapshot_tar.SnapshotTar) -> StreamingResponse:
    # A sync iterator: Starlette runs it in a thread pool, so pack reads and decompression never block the event loop.
    return StreamingResponse(tar.blocks, media_type=snapshot_tar.MEDIA_TYPE, headers={"Content-Disposition": tar.disposition})


@router.post("/snapshots/{snapshot_id}/read", response_class=Response, responses={**errors(401, 403, 404, 422), **_BINARY_REPLY})
async def read_pack(snapshot_id: str, body: ReadRequest, db: Db, principal: Caller, request: Request) -> Response:
    """Byte ranges of one of the snapshot's packs, concatenated (at most 64 MiB)."""
    snap = await access.readable_snapshot(db, principal, snapshot_id)
    return _binary(await svc.read(db, workspace_store(request), snap, body.pack, body.ranges))


@router.post("/gc", response_model=GcReport, responses=errors(401, 403, 422))
async def collect_garbage(_admin: Admin, request: Request, grace_s: float | None = Query(None, ge=0, le=_MAX_GRACE_S)) -> GcReport:
    """Delete packs no snapshot references (older than the grace period) and orphaned store objects now."""
    settings = request.app.state.settings
    return await svc.gc(request.app.state.sessionmaker, workspace_store(request),
                        settings.workspace_gc_grace_s if grace_s is None else grace_s)
