"""What the supervisor and the CLI call: snapshot a workspace to the server, restore one from it.

The engine (``snapshot``/``restore``) runs in a worker thread with its own thread pool; packs travel
over blocking keep-alive connections from worker threads (``transfer``), everything else through the
caller's :class:`~berth.client.BerthClient`. Every failure surfaces as :class:`~berth.errors.WorkspaceError`;
a failed sync never replaces the previous snapshot (the commit is the last step), and a later sync resends
only what the server still lacks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from berth.client import BerthClient
from berth.errors import BerthError, Conflict, WorkspaceError
from berth.ids import new_id

from . import manifest as mf
from .api import WorkspaceApi
from .format import Pack, decode_locations, subset_pack
from .restore import ReadRanges, RestoreResult, restore_tree
from .schemas import SnapshotView, WorkspaceState
from .snapshot import PackSink, ParentCache, SnapshotResult, take_snapshot

_UPLOADS_IN_FLIGHT = 1  # plus the pack being filled meanwhile: bounds memory, and the server keeps up


@dataclass
class SnapshotInfo:
    id: str
    session_id: str
    created_at: datetime
    files: int
    bytes_total: int
    bytes_new: int  # stored bytes this snapshot added (0 for a restore of an existing one)
    bytes_sent: int = 0  # bytes this call uploaded (a resumed sync sends less than bytes_new)
    dropped_bits: str | None = None  # a restore: which entries came back without their setuid/setgid bits

    @classmethod
    def of(cls, view: SnapshotView, bytes_sent: int = 0) -> SnapshotInfo:
        return cls(view.id, view.session_id, view.created_at, view.files, view.bytes_total, view.bytes_new, bytes_sent)


class Engine(Protocol):
    """Where the snapshot engine touches the files: in this process (the CLI, as whoever runs it), or in a
    helper acting as a session's user (the supervisor: ``berth.agent.sync.SessionEngine``)."""

    async def snapshot(self, root: Path, sink: PackSink, *, parent: ParentCache | None, excludes: list[str] | None,
                       max_bytes: int | None, emit: Callable[[str], None]) -> SnapshotResult: ...

    async def restore(self, manifest: bytes, locations: bytes, read: ReadRanges, dest: Path, *,
                      progress: Callable[[int, int], None] | None, want_inodes: bool) -> RestoreResult: ...


class InProcess:
    """The engine in worker threads of this process, with this process's rights."""

    async def snapshot(self, root: Path, sink: PackSink, *, parent: ParentCache | None, excludes: list[str] | None,
                       max_bytes: int | None, emit: Callable[[str], None]) -> SnapshotResult:
        return await asyncio.to_thread(take_snapshot, root, sink, parent=parent, excludes=excludes, max_bytes=max_bytes,
                                       emit=emit)

    async def restore(self, manifest: bytes, locations: bytes, read: ReadRanges, dest: Path, *,
                      progress: Callable[[int, int], None] | None, want_inodes: bool) -> RestoreResult:
        decoded = await asyncio.to_thread(mf.decode, manifest)
        table = await asyncio.to_thread(decode_locations, locations)
        return await asyncio.to_thread(restore_tree, decoded, table, read, dest, progress=progress, want_inodes=want_inodes)


IN_PROCESS = InProcess()


def as_workspace_error(what: str, exc: Exception) -> WorkspaceError:
    """Every failure of a sync or restore as the one type callers catch, with a message naming the cause."""
    if isinstance(exc, BerthError):
        return WorkspaceError(f"workspace {what} failed: {exc.message}")
    if isinstance(exc, OSError):
        return WorkspaceError(f"workspace {what} failed: {exc.strerror or exc}")
    return WorkspaceError(f"workspace {what} failed: {type(exc).__name__}: {exc}")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _on_loop(fn: Callable[[str], None], loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
    """The caller's emit, always run on its own event loop thread (the engine calls it from threads)."""
    def call(line: str) -> None:
        try:
            if asyncio.get_running_loop() is loop:
                fn(line)
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(fn, line)
    return call


class _ServerSink:
    """PackSink that uploads from its own thread while the engine fills the next pack: asks which
    chunks are missing, sends only those."""

    def __init__(self, api: WorkspaceApi, session_id: str, loop: asyncio.AbstractEventLoop,
                 progress: Callable[[int, int], None] | None):
        self.api, self.session_id, self.loop, self.progress = api, session_id, loop, progress
        self.pool = ThreadPoolExecutor(_UPLOADS_IN_FLIGHT, thread_name_prefix="berth-upload")
        self.in_flight: deque[Future] = deque()
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.packs_sent = 0
        self.cancelled = False

    def _upload(self, pack: Pack) -> None:
        if self.cancelled:
            return
        wanted = set(self.api.missing(self.session_id, [c.id for c in pack.chunks]))
        if not wanted:
            return
        if len(wanted) < len(pack.chunks):
            pack = subset_pack(pack, wanted)
        self.api.put_pack(self.session_id, pack)
        with self.lock:
            self.bytes_sent += pack.size
            self.packs_sent += 1
            sent, packs = self.bytes_sent, self.packs_sent
        if self.progress:
            asyncio.run_coroutine_threadsafe(_call(self.progress, sent, packs), self.loop).result()

    def put_pack(self, pack: Pack) -> None:  # called from the engine's thread
        if self.cancelled:
            raise WorkspaceError("workspace sync cancelled")
        while len(self.in_flight) >= _UPLOADS_IN_FLIGHT:
            self.in_flight.popleft().result()
        self.in_flight.append(self.pool.submit(self._upload, pack))

    def flush(self) -> None:
        while self.in_flight:
            self.in_flight.popleft().result()

    def close(self) -> None:
        self.cancelled = True
        for fut in self.in_flight:
            fut.cancel()
        self.pool.shutdown(wait=True)


async def _call(fn: Callable, *args) -> None:
    fn(*args)


async def _parent(api: WorkspaceApi, state: WorkspaceState, state_dir: Path) -> tuple[ParentCache | None, str | None]:
    """The snapshot to be incremental against, and what is known about it locally."""
    cache = await asyncio.to_thread(ParentCache.load, state_dir)
    latest = state.latest
    if latest is not None:
        if cache is not None and cache.snapshot_id == latest.id and cache.project == state.project:
            return cache, latest.id
        # The side cache is gone or stale: every file is read again, but chunks the server has stay there.
        manifest_bytes = await api.manifest(latest.id)
        cache = await asyncio.to_thread(ParentCache, latest.id, state.session_id, state.project, manifest_bytes)
        return cache, latest.id
    if cache is not None and cache.snapshot_id and cache.session_id in (state.session_id, state.restored_from):
        # First sync after a restore: incremental against the restored snapshot when it shares our chunk namespace.
        return (cache if cache.project == state.project else None), cache.snapshot_id
    return None, None


async def _sync_once(api: WorkspaceApi, state: WorkspaceState, root: Path, parent: ParentCache | None, parent_id: str | None,
                     state_dir: Path, excludes, max_bytes, say, progress, engine: Engine) -> SnapshotInfo:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    sink = _ServerSink(api, state.session_id, loop, progress)
    try:
        result = await engine.snapshot(root, sink, parent=parent, excludes=excludes, max_bytes=max_bytes, emit=say)
    finally:
        sink.cancelled = True  # stops an engine thread still running after a cancellation
        await asyncio.to_thread(sink.close)
    view = await api.commit(state.session_id, new_id(8), result.manifest, parent_id)
    cache = result.cache
    cache.snapshot_id, cache.session_id, cache.project = view.id, state.session_id, state.project
    try:
        await asyncio.to_thread(cache.save, state_dir)
    except OSError as exc:  # only costs speed: the next sync reads every file
        say(f"workspace: could not save the sync cache in {state_dir}: {exc.strerror}")
    say(f"workspace: snapshot {view.id}: {view.files} files, {human(view.bytes_total)}; read {result.files_read} files, "
        f"sent {human(sink.bytes_sent)} in {time.monotonic() - started:.1f} s")
    return SnapshotInfo.of(view, sink.bytes_sent)


async def snapshot_to_server(client: BerthClient, session_id: str, root: Path, *, state_dir: Path,
                             excludes: list[str] | None = None, max_bytes: int | None = None,
                             emit: Callable[[str], None] = print,
                             progress: Callable[[int, int], None] | None = None, engine: Engine = IN_PROCESS) -> SnapshotInfo:
    """Snapshot `root` as the next snapshot of `session_id` (the client holds that session's token).

    Incremental against the session's latest snapshot (or the one restored into it). `state_dir` is
    private (0700) and keeps the parent's file list with inode/ctime data between calls. `excludes`:
    gitignore patterns (None: ``DEFAULT_EXCLUDES``). `max_bytes`: larger workspaces are refused before
    anything is sent. `progress(bytes_sent, packs_sent)` runs on the event loop after each stored pack.
    `engine`: where the files are read (see :class:`Engine`). Raises WorkspaceError; the previous snapshot
    stays the latest then.
    """
    loop = asyncio.get_running_loop()
    say = _on_loop(emit, loop)
    api = WorkspaceApi(client)
    try:
        state = await api.state(session_id)
        parent, parent_id = await _parent(api, state, Path(state_dir))
        try:
            return await _sync_once(api, state, Path(root), parent, parent_id, Path(state_dir), excludes, max_bytes, say, progress, engine)
        except Conflict as exc:
            if parent is None or "not in the store" not in exc.message:
                raise
            # Chunks the parent snapshot had were collected meanwhile: read and offer everything once more.
            say(f"workspace: {exc.message}; reading every file again")
            return await _sync_once(api, state, Path(root), None, parent_id, Path(state_dir), excludes, max_bytes, say, progress, engine)
    except WorkspaceError:
        raise
    except Exception as exc:  # the supervisor catches one type; the cause stays chained
        raise as_workspace_error("sync", exc) from exc
    finally:
        api.close()


async def restore_snapshot(client: BerthClient, snapshot_id: str, dest: Path, *, emit: Callable[[str], None] = print,
                           state_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
                           engine: Engine = IN_PROCESS) -> SnapshotInfo:
    """Restore one snapshot into `dest`; see :func:`restore_from_server`."""
    api = WorkspaceApi(client)
    started = time.monotonic()
    try:
        view = await api.snapshot(snapshot_id)
        manifest_bytes, table = await asyncio.gather(api.manifest(snapshot_id), api.locations(snapshot_id))

        def read(pack: str, ranges: list[tuple[int, int]]) -> bytes:  # from the restore's worker threads
            return api.read(snapshot_id, pack, ranges)

        result = await engine.restore(manifest_bytes, table, read, Path(dest), progress=progress,
                                      want_inodes=state_dir is not None)
        if state_dir is not None:
            manifest = await asyncio.to_thread(mf.decode, manifest_bytes)
            inodes = array("q")
            for path in manifest.paths:
                inodes.extend(result.inodes.get(path, (-1, -1)))
            cache = ParentCache(view.id, view.session_id, view.project, manifest_bytes, inodes, manifest)
            await asyncio.to_thread(cache.save, Path(state_dir))
    except WorkspaceError:
        raise
    except Exception as exc:  # the supervisor catches one type; the cause stays chained
        raise as_workspace_error("restore", exc) from exc
    finally:
        api.close()
    emit(f"workspace: restored snapshot {view.id} of session {view.session_id}: {result.files} files, "
         f"{human(result.bytes_total)} in {time.monotonic() - started:.1f} s")
    info = SnapshotInfo.of(view)
    if result.dropped_bits:
        more = len(result.dropped_bits) - 3
        info.dropped_bits = (f"setuid/setgid bits are never restored: dropped them from {', '.join(result.dropped_bits[:3])}"
                             + (f" and {more} more" if more > 0 else ""))
        emit(f"workspace: {info.dropped_bits}")
    return info


async def restore_from_server(client: BerthClient, source_session_id: str, dest: Path, *, emit: Callable[[str], None] = print,
                              state_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
                              engine: Engine = IN_PROCESS) -> SnapshotInfo | None:
    """Restore the latest complete snapshot of `source_session_id` into `dest`; None when it has none.

    Every chunk is verified; entries that would escape `dest` are refused; files belong to whoever the
    engine acts as, and setuid/setgid bits are dropped (said in one line). With `state_dir`, the first sync afterwards is incremental against the
    restored snapshot. `progress(bytes_done, bytes_total)` is called from worker threads.
    """
    try:
        snaps = await WorkspaceApi(client).snapshots(session=source_session_id, limit=1)
    except BerthError as exc:
        raise WorkspaceError(f"workspace restore failed: {exc.message}") from exc
    if not snaps:
        return None
    return await restore_snapshot(client, snaps[0].id, dest, emit=emit, state_dir=state_dir, progress=progress, engine=engine)
