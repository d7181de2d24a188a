"""A snapshot as a POSIX (pax) tar stream, built as it is read: what the dashboard's Download link and
``GET /api/v1/workspaces/snapshots/{id}/tar`` send.

Memory stays bounded whatever the snapshot holds: file contents are fetched in windows of at most
``WINDOW_BYTES`` (raw) of chunks, verified against their SHA-256 and yielded chunk by chunk, so no file is
ever whole in memory. Headers come from ``tarfile.TarInfo.tobuf`` (pax: long and non-UTF-8 names, exact
nanosecond mtimes, sizes past 8 GiB). What a restore keeps, the tar keeps: directories, files, symlinks
(stored as links, never followed), permission bits and mtimes; setuid and setgid bits are dropped, as
``restore`` drops them. Owners are not recorded (uid/gid 0, no names). Names are safe because every
manifest passed ``manifest.decode`` (relative paths, no '.', '..' or empty component); ``top`` is checked here.
Entries come parents first (sorted by path components), so an extractor never meets a child first.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Iterable, Iterator

from berth.errors import BerthError, WorkspaceError

from .format import Location, decode_chunk
from .manifest import Entry, Manifest
from .restore import ReadRanges

WINDOW_BYTES = 8 << 20  # raw bytes of chunks fetched at once
_MAX_GAP = 64 << 10  # read through smaller gaps between chunks of a pack rather than splitting the range
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def tar_stream(manifest: Manifest, locations: dict[str, Location], read: ReadRanges, top: str = "") -> Iterator[bytes]:
    """The tar of `manifest`, in blocks of at most one chunk. `read(pack, ranges)` as for ``restore_tree``;
    `top`: a directory name to put everything under ('' for none). Missing chunks and sizes that do not add
    up raise WorkspaceError here, before the first byte; a chunk that is corrupt or unreadable raises it
    from the iterator (the stream is then cut short)."""
    if top and (top in (".", "..") or "/" in top or "\0" in top):
        raise WorkspaceError(f"tar: {top!r} is not a directory name")
    entries = sorted(manifest.entries(), key=lambda e: e.path.split("/"))
    for e in entries:
        if e.kind != "f":
            continue
        found = [locations.get(cid) for cid in e.chunks]
        if None in found:
            raise WorkspaceError(f"cannot read {e.path}: one of its chunks is missing from the store")
        if sum(loc.raw_length for loc in found) != e.size:
            raise WorkspaceError(f"cannot read {e.path}: its chunks do not add up to {e.size} bytes")
    return _generate(entries, locations, read, top)


def _generate(entries: list[Entry], locations: dict[str, Location], read: ReadRanges, top: str) -> Iterator[bytes]:
    prefix = f"{top}/" if top else ""
    datas = _chunk_data((cid for e in entries if e.kind == "f" for cid in e.chunks), locations, read)
    total = 0
    if top:
        head = _header(top, tarfile.DIRTYPE, 0o755, max((e.mtime_ns for e in entries), default=0))
        total += len(head)
        yield head
    for e in entries:
        kind = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "l": tarfile.SYMTYPE}[e.kind]
        head = _header(prefix + e.path, kind, e.mode & ~_SET_ID_BITS, e.mtime_ns, e.size, e.target)
        total += len(head)
        yield head
        if e.kind != "f":
            continue
        for _ in e.chunks:
            data = next(datas)
            total += len(data)
            yield data if isinstance(data, bytes) else bytes(data)  # a raw chunk is a view of the pack read
        if e.size % _BLOCK:
            pad = _BLOCK - e.size % _BLOCK
            total += pad
            yield bytes(pad)
    total += 2 * _BLOCK  # the end-of-archive marker, then zeros to a whole record, as tarfile writes it
    yield bytes(2 * _BLOCK + (-total) % _RECORD)


def _header(name: str, kind: bytes, mode: int, mtime_ns: int, size: int = 0, target: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, target
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    seconds, ns = divmod(mtime_ns, 10**9)
    info.mtime = seconds
    if ns or seconds < 0:  # exactly, in pax (tarfile would round a float to a double's precision)
        sign, whole = ("-", -mtime_ns) if mtime_ns < 0 else ("", mtime_ns)
        s, frac = divmod(whole, 10**9)
        info.pax_headers = {"mtime": f"{sign}{s}.{frac:09d}".rstrip("0").rstrip(".")}
        info.mtime = max(seconds, 0)
    # surrogateescape: a name that was not UTF-8 on disk goes back to its original bytes (pax hdrcharset=BINARY)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _chunk_data(ids: Iterable[str], locations: dict[str, Location], read: ReadRanges) -> Iterator[bytes | memoryview]:
    """The raw bytes of each chunk in `ids`, in order, fetched a window at a time."""
    window: list[str] = []
    size = 0
    for cid in ids:
        window.append(cid)
        size += locations[cid].raw_length
        if size >= WINDOW_BYTES:
            yield from _fetch(window, locations, read)
            window, size = [], 0
    if window:
        yield from _fetch(window, locations, read)


def _fetch(window: list[str], locations: dict[str, Location], read: ReadRanges) -> Iterator[bytes | memoryview]:
    by_pack: dict[str, list[str]] = {}
    for cid in dict.fromkeys(window):  # a chunk that appears twice is fetched once
        by_pack.setdefault(locations[cid].pack, []).append(cid)
    raw: dict[str, bytes | memoryview] = {}
    for pack, cids in by_pack.items():
        cids.sort(key=lambda c: locations[c].offset)
        spans: list[list[int]] = []  # [offset, end, position in the data read]
        got = 0
        for cid in cids:
            loc = locations[cid]
            if spans and loc.offset - spans[-1][1] <= _MAX_GAP:
                got += max(0, loc.offset + loc.length - spans[-1][1])
                spans[-1][1] = max(spans[-1][1], loc.offset + loc.length)
            else:
                spans.append([loc.offset, loc.offset + loc.length, got])
                got += loc.length
        try:
            data = memoryview(read(pack, [(a, b - a) for a, b, _ in spans]))
        except (BerthError, OSError) as exc:
            why = exc.message if isinstance(exc, BerthError) else (exc.strerror or type(exc).__name__)
            raise WorkspaceError(f"reading pack {pack[:12]} failed: {why}") from None
        if len(data) != got:
            raise WorkspaceError(f"pack {pack[:12]} is truncated or missing")
        span = 0
        for cid in cids:
            loc = locations[cid]
            while loc.offset >= spans[span][1]:
                span += 1
            start = spans[span][2] + loc.offset - spans[span][0]
            chunk = decode_chunk(cid, loc.codec, data[start:start + loc.length], loc.raw_length)
            if chunk is None:
                raise WorkspaceError(f"chunk {cid[:12]} is corrupt (its SHA-256 does not match)")
            raw[cid] = chunk
        del data
    for cid in window:
        yield raw[cid]
