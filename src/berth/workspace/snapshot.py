"""Taking a snapshot: walk the tree, read only what changed, chunk, hash, compress and pack, streamed.

Reading, hashing and compressing run in a thread pool (hashlib and zstandard release the GIL); the
calling thread walks, keeps results in order and fills packs, which go to a :class:`PackSink` (the local
store, or the server uploader in ``sync.py``). Memory stays bounded: a few tasks of at most one chunk
each are in flight, plus the pack being filled and whatever the sink holds.

A file is not read again when its size, mtime, inode and ctime equal those recorded for the parent
snapshot in the local side cache (:class:`ParentCache`, kept in the caller's private state directory;
inode numbers never go to the server).
"""

from __future__ import annotations

import marshal
import os
import stat
import time
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from berth.errors import WorkspaceError

from . import manifest as mf
from .excludes import DEFAULT_EXCLUDES, Excludes
from .format import CHUNK_SIZE, PACK_SIZE, RAW, Pack, build_pack, chunk_id, encode_chunk, encode_small

_CACHE_FILE = "workspace-cache"
_CACHE_MAGIC = b"BERTHSC2"
_MEMO: dict[str, tuple[tuple, ParentCache]] = {}  # state dir -> (file identity, the cache this process saved there)
_GROUP_BYTES = 1 << 20  # small files are read in groups of about this much per task
_GROUP_FILES = 128
_RACY_NS = 2_000_000_000  # files touched this close to the scan are re-read next time (same-tick edits)
_O_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


class PackSink(Protocol):
    def put_pack(self, pack: Pack) -> None: ...  # may block (back-pressure); raises to abort the snapshot

    def flush(self) -> None: ...  # wait until every pack handed over is stored


class ParentCache:
    """What the next snapshot needs to know about the previous one, kept between calls in `state_dir`:
    the parent's manifest (as committed) and, per entry, the inode and ctime it had (-1: unknown)."""

    def __init__(self, snapshot_id: str, session_id: str, project: str, manifest_bytes: bytes,
                 inodes: array | None = None, manifest: mf.Manifest | None = None):
        self.snapshot_id, self.session_id, self.project = snapshot_id, session_id, project
        self.manifest_bytes = manifest_bytes
        self.manifest = manifest or mf.decode(manifest_bytes)
        self.inodes = inodes if inodes is not None else array("q", [-1]) * (2 * len(self.manifest.paths))
        if len(self.inodes) != 2 * len(self.manifest.paths):
            raise ValueError("inode table does not match the manifest")

    def known_chunks(self) -> set[str]:
        return self.manifest.chunk_ids()

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        m = self.manifest
        # marshal, not JSON: loading is 10x faster, and only ever from this private directory.
        doc = (1, self.snapshot_id, self.session_id, self.project, self.manifest_bytes, m.chunk_size,
               m.paths, m.kinds, m.modes, m.mtimes, m.sizes, m.nchunks, m.chunks, m.targets, self.inodes.tobytes())
        tmp = state_dir / f".{_CACHE_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_CACHE_MAGIC)
            marshal.dump(doc, f)
        os.replace(tmp, state_dir / _CACHE_FILE)
        st = (state_dir / _CACHE_FILE).stat()
        _MEMO[str(state_dir)] = ((st.st_ino, st.st_mtime_ns, st.st_size), self)

    @classmethod
    def load(cls, state_dir: Path | None) -> ParentCache | None:
        if state_dir is None:
            return None
        try:
            st = (state_dir / _CACHE_FILE).stat()
            memo = _MEMO.get(str(state_dir))
            if memo is not None and memo[0] == (st.st_ino, st.st_mtime_ns, st.st_size):
                return memo[1]  # a long-running supervisor: the file is the one it wrote, no need to read it
            data = (state_dir / _CACHE_FILE).read_bytes()
            if not data.startswith(_CACHE_MAGIC):
                return None
            doc = marshal.loads(data[len(_CACHE_MAGIC):])
            if doc[0] != 1:
                return None
            manifest = mf.Manifest(*doc[5:14])
            inodes = array("q")
            inodes.frombytes(doc[14])
            return cls(doc[1], doc[2], doc[3], doc[4], inodes, manifest)
        except (OSError, ValueError, EOFError, TypeError, IndexError):
            return None  # no cache, or an unreadable one: the next snapshot reads everything


@dataclass
class SnapshotResult:
    manifest: bytes
    cache: ParentCache  # for the snapshot just taken (ids filled in by the caller once committed)
    files: int = 0
    bytes_total: int = 0
    files_read: int = 0
    bytes_read: int = 0
    chunks_new: int = 0
    bytes_new: int = 0  # stored (compressed) bytes handed to the sink
    skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Item:
    path: str
    kind: str
    st: os.stat_result
    target: str = ""


def scan(root: Path, excludes: Excludes, emit: Callable[[str], None]) -> list[_Item]:
    """Every entry under root (parents before children), symlinks not followed, special files skipped."""
    items: list[_Item] = []
    stack = [(str(root), "")]
    while stack:
        abs_dir, rel_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                dir_entries = list(it)  # directory order: stable while the directory is unchanged
        except OSError as exc:
            emit(f"workspace: skipped unreadable directory {rel_dir or '.'}: {exc.strerror}")
            continue
        subdirs = []
        for e in dir_entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since listed
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if not excludes.excluded(rel, True):
                    items.append(_Item(rel, "d", st))
                    subdirs.append((e.path, rel))
            elif excludes.excluded(rel, False):
                continue
            elif stat.S_ISREG(mode):
                items.append(_Item(rel, "f", st))
            elif stat.S_ISLNK(mode):
                try:
                    items.append(_Item(rel, "l", st, os.readlink(e.path)))
                except OSError:
                    continue
            else:
                kind = "socket" if stat.S_ISSOCK(mode) else "fifo" if stat.S_ISFIFO(mode) else "device file"
                emit(f"workspace: skipped {kind} {rel}")
        stack.extend(reversed(subdirs))
    return items


def _open(path: str) -> int:
    global _NOATIME
    try:
        return os.open(path, _O_FLAGS | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        _NOATIME = 0  # O_NOATIME needs file ownership (or root); plain reads are fine
        return os.open(path, _O_FLAGS)


def _read(path: str, offset: int, length: int) -> bytes:
    """At most `length` bytes (a file growing meanwhile cannot blow memory; its new mtime makes it racy)."""
    fd = _open(path)
    try:
        if offset == 0:
            data = os.read(fd, length)
        else:
            data = os.pread(fd, length, offset)
        if len(data) < length:  # rare: a short read that is not EOF
            more = os.pread(fd, length - len(data), offset + len(data))
            data += more
    finally:
        os.close(fd)
    return data


_Chunk = tuple[str, int, bytes | None, int]  # id, codec, blob (None: already stored), raw length


def _task(jobs: list[tuple[int, str, int, int]], known: set[str]) -> list[tuple[int, _Chunk | None, str]]:
    """Read, hash and encode; one result per job: (item index, chunk or None on error, error)."""
    datas: list[bytes | None] = []
    errors: list[str] = []
    for _idx, path, offset, length in jobs:
        try:
            datas.append(_read(path, offset, length))
            errors.append("")
        except OSError as exc:
            datas.append(None)
            errors.append(exc.strerror or str(exc))
    ids = [chunk_id(d) if d is not None else "" for d in datas]
    fresh = [i for i, d in enumerate(datas) if d is not None and ids[i] not in known]
    encoded: dict[int, tuple[int, bytes]] = {}
    if len(jobs) == 1 and fresh:
        encoded[0] = encode_chunk(datas[0])
    elif fresh:
        encoded = dict(zip(fresh, encode_small([datas[i] for i in fresh])))
    out = []
    for i, (idx, _path, _offset, _length) in enumerate(jobs):
        d = datas[i]
        if d is None:
            out.append((idx, None, errors[i]))
        else:
            codec, blob = encoded.get(i, (RAW, None))
            out.append((idx, (ids[i], codec, blob, len(d)), ""))
    return out


def take_snapshot(root: Path, sink: PackSink, *, parent: ParentCache | None = None, excludes: list[str] | None = None,
                  max_bytes: int | None = None, emit: Callable[[str], None] = print,
                  progress: Callable[[int, int], None] | None = None, chunk_size: int = CHUNK_SIZE,
                  pack_size: int = PACK_SIZE, workers: int | None = None) -> SnapshotResult:
    """Snapshot `root` into `sink`; returns the manifest (not yet committed) and the new side cache.

    `excludes`: gitignore patterns (None: DEFAULT_EXCLUDES). `progress(bytes_read, bytes_to_read)`.
    Raises WorkspaceError when the tree is larger than `max_bytes` (before anything is sent).
    """
    root = Path(root)
    if not root.is_dir():
        raise WorkspaceError(f"workspace {root} is not a directory")
    scan_start = time.time_ns()
    items = scan(root, Excludes(DEFAULT_EXCLUDES if excludes is None else excludes), emit)
    total = sum(it.st.st_size for it in items if it.kind == "f")
    if max_bytes is not None and total > max_bytes:
        raise WorkspaceError(f"workspace is {total / 1e9:.2f} GB, over the {max_bytes / 1e9:.2f} GB limit: "
                             "snapshot not taken (the previous one is kept); delete files or add excludes")

    # Unchanged files keep the parent's chunk list (a slice of its joined chunk ids) and are not read.
    reused: dict[int, tuple[int, str]] = {}  # item index -> (size, chunk ids joined)
    jobs: list[tuple[int, str, int, int]] = []
    if parent is not None:
        pm, inodes = parent.manifest, parent.inodes
        index = {path: i for i, path in enumerate(pm.paths)}
        starts = pm.chunk_starts()
    for idx, it in enumerate(items):
        if it.kind != "f":
            continue
        st = it.st
        if parent is not None:
            i = index.get(it.path)
            if (i is not None and pm.kinds[i] == "f" and pm.sizes[i] == st.st_size and pm.mtimes[i] == st.st_mtime_ns
                    and inodes[2 * i] == st.st_ino and inodes[2 * i + 1] == st.st_ctime_ns):
                reused[idx] = (pm.sizes[i], pm.chunks[starts[i] * 64:(starts[i] + pm.nchunks[i]) * 64])
                continue
        abs_path = os.path.join(root, it.path)
        for offset in range(0, st.st_size, chunk_size):
            jobs.append((idx, abs_path, offset, min(chunk_size, st.st_size - offset)))

    result = SnapshotResult(manifest=b"", cache=None)  # type: ignore[arg-type]
    known = parent.known_chunks() if parent is not None and jobs else set()
    to_read = sum(j[3] for j in jobs)
    read_ids: dict[int, list[str]] = {}
    read_sizes: dict[int, int] = {}
    failed: dict[int, str] = {}
    pending_pack: list[tuple[str, int, bytes, int]] = []
    pending_size = 0

    def consume(outputs) -> None:
        nonlocal pending_size
        for idx, chunk, error in outputs:
            if chunk is None:
                failed[idx] = error
                continue
            cid, codec, blob, raw = chunk
            read_ids.setdefault(idx, []).append(cid)
            read_sizes[idx] = read_sizes.get(idx, 0) + raw
            result.bytes_read += raw
            if cid not in known:
                known.add(cid)
                pending_pack.append((cid, codec, blob, raw))
                pending_size += len(blob)
                result.chunks_new += 1
                result.bytes_new += len(blob)
                if pending_size >= pack_size:
                    sink.put_pack(build_pack(pending_pack))
                    pending_pack.clear()
                    pending_size = 0
        if progress:
            progress(result.bytes_read, to_read)

    workers = workers or min(8, (os.cpu_count() or 2) + 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="berth-snapshot")
    try:
        in_flight: deque = deque()
        for group in _groups(jobs):
            in_flight.append(pool.submit(_task, group, known))
            if len(in_flight) >= workers + 2:  # bounds memory: a few chunks read ahead of the packer
                consume(in_flight.popleft().result())
        while in_flight:
            consume(in_flight.popleft().result())
        if pending_pack:
            sink.put_pack(build_pack(pending_pack))
        sink.flush()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    m = mf.Manifest(chunk_size)
    paths, kinds, modes, mtimes, sizes, nchunks, chunks = m.paths, [], m.modes, m.mtimes, m.sizes, m.nchunks, []
    inode_list: list[int] = []
    racy_after = scan_start - _RACY_NS
    for idx, it in enumerate(items):
        st = it.st
        if it.kind != "f":
            if idx in failed:
                continue
            paths.append(it.path)
            kinds.append(it.kind)
            modes.append(st.st_mode & 0o7777)
            mtimes.append(st.st_mtime_ns)
            sizes.append(0)
            nchunks.append(0)
            if it.kind == "l":
                m.targets.append(it.target)
            inode_list += (-1, -1)
            continue
        if idx in failed:
            emit(f"workspace: skipped {it.path}: {failed[idx]}")
            result.skipped.append(it.path)
            continue
        if idx in reused:
            size, ids = reused[idx]
        else:
            size, ids = read_sizes.get(idx, 0), "".join(read_ids.get(idx, ()))
        paths.append(it.path)
        kinds.append("f")
        modes.append(st.st_mode & 0o7777)
        mtimes.append(st.st_mtime_ns)
        sizes.append(size)
        nchunks.append(len(ids) // 64)
        chunks.append(ids)
        changed = size != st.st_size  # it shrank while read (one that grew has a new mtime: racy below)
        if changed:
            emit(f"workspace: {it.path} changed while it was read; the next sync reads it again")
        if changed or st.st_mtime_ns >= racy_after or st.st_ctime_ns >= racy_after:
            inode_list += (-1, -1)
        else:
            inode_list += (st.st_ino, st.st_ctime_ns)
        result.files += 1
        result.bytes_total += size
    result.files_read = len({j[0] for j in jobs}) - len(failed)
    m.kinds, m.chunks = "".join(kinds), "".join(chunks)
    result.manifest = mf.encode(m)
    result.cache = ParentCache("", "", "", result.manifest, array("q", inode_list), m)
    return result


def _groups(jobs):
    """Small files travel together (fewer tasks); a chunk of a large file is a task of its own."""
    group, size = [], 0
    for job in jobs:
        length = job[3]
        if length >= _GROUP_BYTES:
            yield [job]
            continue
        group.append(job)
        size += length
        if size >= _GROUP_BYTES or len(group) >= _GROUP_FILES:
            yield group
            group, size = [], 0
    if group:
        yield group
