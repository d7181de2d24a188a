"""Restoring a snapshot into a directory: every chunk verified, nothing written outside the destination.

Order: directories (created private), file contents (fetched pack by pack in coalesced ranges, verified
against their SHA-256, written by a thread pool), symlinks last (so nothing is ever written through one),
then directory owners, modes and mtimes, deepest first. A corrupt, missing or unreadable chunk raises
WorkspaceError naming the file; a partial restore is left for the caller to discard.

Safety rests on three things: the manifest gate (``manifest.decode`` refuses '..', absolute paths and
children of anything that is not a directory of the snapshot), directories checked with lstat as they
are created, and O_NOFOLLOW on every file opened. Setuid and setgid bits are never restored (listed in
``RestoreResult.dropped_bits``). A supervisor restores as the session user (``berth.agent.as_session``),
so whatever the destination holds, the kernel checks every access with that user's rights.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from berth.errors import BerthError, WorkspaceError

from .format import Location, decode_chunk
from .manifest import Entry, Manifest

ReadRanges = Callable[[str, list[tuple[int, int]]], bytes]  # (pack digest, [(offset, length)]) -> the bytes, concatenated

_MAX_REQUEST = 8 << 20
_MAX_GAP = 256 << 10  # read through gaps smaller than this rather than splitting the range
_W_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID  # never restored: a setuid file must not come back owned by someone else


@dataclass
class RestoreResult:
    files: int = 0
    bytes_total: int = 0
    dropped_bits: list[str] = field(default_factory=list)  # entries restored without their setuid/setgid bits
    inodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (inode, ctime_ns), for the side cache


@dataclass(slots=True)
class _File:
    entry: Entry
    path: str  # absolute
    remaining: int  # chunk writes still to come
    chmod: bool = True  # created with other permissions than its own (umask, special bits, existed)


def _umask() -> int | None:
    try:  # os.umask() would have to set it to read it: racy with other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


class _Restorer:
    def __init__(self, manifest: Manifest, locations: dict[str, Location], read: ReadRanges, dest: Path,
                 uid: int | None, gid: int | None, progress: Callable[[int, int], None] | None, want_inodes: bool):
        self.manifest, self.locations, self.read = manifest, locations, read
        self.entries = list(manifest.entries())
        # Directories parents first (and deepest first for their final metadata), whatever the manifest order.
        self.dirs = sorted((e for e in self.entries if e.kind == "d"), key=lambda e: e.path.count("/"))
        self.dest = os.path.realpath(dest)
        self.uid = uid
        self.gid = gid if gid is not None else (-1 if uid is None else uid)
        self.progress = progress
        self.want_inodes = want_inodes
        self.umask = _umask()
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.result = RestoreResult()

    def abs(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    def mode_of(self, e: Entry) -> int:
        if e.mode & _SET_ID_BITS:
            with self.lock:
                self.result.dropped_bits.append(e.path)
        return e.mode & ~_SET_ID_BITS

    # --- directories ---------------------------------------------------------------------------
    def make_dirs(self) -> None:
        os.makedirs(self.dest, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(self.dest).st_mode):
            raise WorkspaceError(f"cannot restore into {self.dest}: not a directory")
        for e in self.dirs:
            path = self.abs(e.path)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise WorkspaceError(f"cannot restore directory {e.path}: something else exists there") from None

    # --- file contents -------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, list[tuple[bytes, Location]]]]:
        """Requests: (pack, chunks in offset order), each at most _MAX_REQUEST bytes."""
        targets: dict[bytes, list[tuple[_File, int]]] = {}
        for e in self.entries:
            if e.kind != "f":
                continue
            f = _File(e, self.abs(e.path), len(e.chunks))
            offset = 0
            for cid in e.chunks:
                loc = self.locations.get(cid)
                if loc is None:
                    raise WorkspaceError(f"cannot restore {e.path}: one of its chunks is missing from the store")
                targets.setdefault(cid, []).append((f, offset))
                offset += loc.raw_length
            if offset != e.size:
                raise WorkspaceError(f"cannot restore {e.path}: its chunks add up to {offset} bytes, not {e.size}")
            self.total += e.size
            if not e.chunks:
                self.write_whole(f, b"")
            elif len(e.chunks) > 1:  # written piecewise by several tasks: create it now
                fd = self.create(f)
                os.close(fd)
        self.targets = targets
        by_pack: dict[str, list[tuple[bytes, Location]]] = {}
        for cid in targets:
            loc = self.locations[cid]
            by_pack.setdefault(loc.pack, []).append((cid, loc))
        requests = []
        for pack, chunks in by_pack.items():
            chunks.sort(key=lambda c: c[1].offset)
            batch, size = [], 0
            for c in chunks:
                if batch and size + c[1].length > _MAX_REQUEST:
                    requests.append((pack, batch))
                    batch, size = [], 0
                batch.append(c)
                size += c[1].length
            requests.append((pack, batch))
        return requests

    def fetch(self, pack: str, chunks: list[tuple[bytes, Location]]) -> None:
        spans: list[list[int]] = []  # [offset, end]
        for _, loc in chunks:
            if spans and loc.offset - spans[-1][1] <= _MAX_GAP:
                spans[-1][1] = max(spans[-1][1], loc.offset + loc.length)
            else:
                spans.append([loc.offset, loc.offset + loc.length])
        first_file = self.targets[chunks[0][0]][0][0].entry.path
        try:
            data = memoryview(self.read(pack, [(a, b - a) for a, b in spans]))
        except (BerthError, OSError) as exc:
            why = exc.message if isinstance(exc, BerthError) else str(exc)
            raise WorkspaceError(f"cannot restore {first_file}: reading pack {pack[:12]} failed: {why}") from None
        if len(data) != sum(b - a for a, b in spans):
            raise WorkspaceError(f"cannot restore {first_file}: pack {pack[:12]} is truncated or missing")
        base, pos = {}, 0
        for a, b in spans:
            base[a] = pos
            pos += b - a
        span_iter = iter(spans)
        span = next(span_iter)
        for cid, loc in chunks:
            while loc.offset >= span[1]:
                span = next(span_iter)
            start = base[span[0]] + loc.offset - span[0]
            raw = decode_chunk(cid, loc.codec, data[start:start + loc.length], loc.raw_length)
            if raw is None:
                names = ", ".join(sorted({f.entry.path for f, _ in self.targets[cid]})[:3])
                raise WorkspaceError(f"cannot restore {names}: a chunk is corrupt (its SHA-256 does not match)")
            for f, offset in self.targets[cid]:
                if len(f.entry.chunks) == 1:
                    self.write_whole(f, raw)
                else:
                    self.write_part(f, offset, raw)
            with self.lock:
                self.done += len(raw) * len(self.targets[cid])
            if self.progress:
                self.progress(self.done, self.total)

    def create(self, f: _File) -> int:
        # Created with its final permissions where the umask allows (one chmod less per file; the
        # directories stay 0700 until the end, so nobody else can reach it meanwhile).
        try:
            fd = os.open(f.path, _W_FLAGS | os.O_CREAT | os.O_EXCL, f.entry.mode & 0o777)
            f.chmod = self.umask is None or bool(f.entry.mode & (0o7000 | self.umask))
            return fd
        except FileExistsError:
            pass  # replaced below; an existing file keeps its old mode until chmod
        except OSError as exc:
            raise WorkspaceError(f"cannot restore {f.entry.path}: {exc.strerror}") from None
        f.chmod = True
        flags = _W_FLAGS | os.O_CREAT | os.O_TRUNC
        try:
            return os.open(f.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # an old symlink in the way: replace it, never follow it
                os.unlink(f.path)
                return os.open(f.path, flags, 0o600)
            raise WorkspaceError(f"cannot restore {f.entry.path}: {exc.strerror}") from None

    def write_whole(self, f: _File, data: bytes) -> None:
        fd = self.create(f)
        try:
            view, done = memoryview(data), 0
            while done < len(data):
                done += os.write(fd, view[done:])
            self.finish(fd, f)
        finally:
            os.close(fd)

    def write_part(self, f: _File, offset: int, data: bytes) -> None:
        fd = os.open(f.path, _W_FLAGS)
        try:
            view, done = memoryview(data), 0
            while done < len(data):
                done += os.pwrite(fd, view[done:], offset + done)
            with self.lock:
                f.remaining -= 1
                last = f.remaining == 0
            if last:
                self.finish(fd, f)
        finally:
            os.close(fd)

    def finish(self, fd: int, f: _File) -> None:
        e = f.entry
        if self.uid is not None:
            os.fchown(fd, self.uid, self.gid)  # before chmod: chown clears setuid bits
        if f.chmod:
            os.fchmod(fd, self.mode_of(e))
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        if self.want_inodes:
            st = os.fstat(fd)  # after the last metadata change, so the side cache's ctime is final
            self.result.inodes[e.path] = (st.st_ino, st.st_ctime_ns)
        with self.lock:
            self.result.files += 1
            self.result.bytes_total += e.size

    # --- symlinks and directory metadata -------------------------------------------------------
    def finish_tree(self) -> None:
        for e in self.entries:
            if e.kind != "l":
                continue
            path = self.abs(e.path)
            try:
                os.symlink(e.target, path)
            except FileExistsError:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    raise WorkspaceError(f"cannot restore symlink {e.path}: a directory exists there") from None
                os.unlink(path)
                os.symlink(e.target, path)
            if self.uid is not None:
                os.lchown(path, self.uid, self.gid)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        for e in reversed(self.dirs):
            path = self.abs(e.path)
            if self.uid is not None:
                os.chown(path, self.uid, self.gid, follow_symlinks=False)
            os.chmod(path, self.mode_of(e), follow_symlinks=False)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        if self.uid is not None:
            os.chown(self.dest, self.uid, self.gid)


def restore_tree(manifest: Manifest, locations: dict[str, Location], read: ReadRanges, dest: Path, *,
                 uid: int | None = None, gid: int | None = None, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None, want_inodes: bool = False) -> RestoreResult:
    """Restore `manifest` into `dest` (created if missing; existing files at the same paths are replaced).

    `read(pack, ranges)` fetches stored bytes (local store or server). `uid`/`gid`: owner for everything
    restored, `dest` included (needs root). `progress(bytes_done, bytes_total)` is called from worker threads.
    `want_inodes`: fill RestoreResult.inodes (for a side cache).
    """
    r = _Restorer(manifest, locations, read, Path(dest), uid, gid, progress, want_inodes)
    try:
        r.make_dirs()
        requests = r.plan()
        workers = workers or min(8, (os.cpu_count() or 2) + 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="berth-restore") as pool:
            in_flight: deque = deque()
            try:
                for pack, chunks in requests:
                    in_flight.append(pool.submit(r.fetch, pack, chunks))
                    if len(in_flight) > workers:
                        in_flight.popleft().result()
                while in_flight:
                    in_flight.popleft().result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        r.finish_tree()
    except OSError as exc:
        raise WorkspaceError(f"restore into {dest} failed: {exc.strerror or exc}"
                             + (f" ({exc.filename})" if exc.filename else "")) from None
    return r.result
