"""A snapshot's manifest: every directory, file and symlink with its metadata and chunk list.

Stored as zstd-compressed JSON, one column per field (so the server validates 20,000 entries with a
handful of C-speed passes instead of a Python loop)::

    {"format": 1, "chunk_size": N, "paths": [...], "kinds": "ddfl…", "modes": [...], "mtimes": [...],
     "sizes": [...], "nchunks": [...], "chunks": "<SHA-256 hex of every chunk, in order>", "targets": [...]}

``kinds``: d directory, f regular file, l symlink (``targets`` holds the symlink targets in order;
they are stored as-is and never followed). Paths are relative and '/'-separated; owners are not
recorded (a restore gives everything to one uid/gid); non-UTF-8 names survive as escaped surrogates.
:func:`decode` is the gate every manifest passes before use: an absolute path, a '.', '..' or empty
component, a duplicate, or an entry below anything that is not a directory of the same manifest
(a symlink, say: what would let a restore write through it) is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import zstandard

from berth.errors import WorkspaceError

FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 30  # decompressed; about ten million entries
_COLUMNS = ("paths", "modes", "mtimes", "sizes", "nchunks")


@dataclass(slots=True)
class Entry:
    path: str
    kind: str  # "d" directory, "f" regular file, "l" symlink
    mode: int  # permission bits (07777)
    mtime_ns: int
    size: int = 0
    chunks: list[str] = field(default_factory=list)  # SHA-256 hex of each chunk, in order
    target: str = ""  # symlink target


@dataclass
class Manifest:
    chunk_size: int
    paths: list[str] = field(default_factory=list)
    kinds: str = ""
    modes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    nchunks: list[int] = field(default_factory=list)
    chunks: str = ""
    targets: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.kinds.count("f")

    @property
    def bytes_total(self) -> int:
        return sum(s for s, k in zip(self.sizes, self.kinds) if k == "f")

    def chunk_ids(self) -> set[str]:
        c = self.chunks
        return {c[i:i + 64] for i in range(0, len(c), 64)}

    def chunk_starts(self) -> list[int]:
        """Index (in chunks) of each entry's first chunk."""
        return [0, *accumulate(self.nchunks)][:-1] if self.nchunks else []

    def entries(self) -> Iterator[Entry]:
        links = iter(self.targets)
        pos = 0
        c = self.chunks
        for path, kind, mode, mtime, size, n in zip(self.paths, self.kinds, self.modes, self.mtimes, self.sizes, self.nchunks):
            if kind == "f":
                yield Entry(path, "f", mode, mtime, size, [c[i:i + 64] for i in range(pos * 64, (pos + n) * 64, 64)])
                pos += n
            elif kind == "l":
                yield Entry(path, "l", mode, mtime, target=next(links))
            else:
                yield Entry(path, "d", mode, mtime)


def encode(m: Manifest) -> bytes:
    doc = {"format": FORMAT, "chunk_size": m.chunk_size, "paths": m.paths, "kinds": m.kinds, "modes": m.modes,
           "mtimes": m.mtimes, "sizes": m.sizes, "nchunks": m.nchunks, "chunks": m.chunks, "targets": m.targets}
    return zstandard.ZstdCompressor(level=1).compress(json.dumps(doc, separators=(",", ":")).encode())


def _bad_component(slashed: str) -> bool:
    """An empty, '.' or '..' component in '/'-framed paths (a leading '/' makes an empty one)."""
    return "//" in slashed or "/./" in slashed or "/../" in slashed


def _is_hex(text: str) -> bool:
    if not (text.isascii() and text.isalnum() and text == text.lower()):
        return not text
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _refuse(why: str, path: str | None = None) -> WorkspaceError:
    where = f" entry {path[:200]!r}" if path is not None else ""
    return WorkspaceError(f"snapshot manifest{where} refused: {why}")


def _ints(values: list, lo: int, hi: int) -> bool:
    return set(map(type, values)) <= {int} and (not values or (lo <= min(values) and max(values) <= hi))


def decode(data: bytes) -> Manifest:
    """Parse and validate; raises WorkspaceError naming the first bad entry found."""
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_MANIFEST_BYTES))
    except (zstandard.ZstdError, ValueError) as exc:
        raise WorkspaceError(f"snapshot manifest does not parse: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _refuse("unknown format")
    cols = {k: doc.get(k) for k in _COLUMNS}
    kinds, chunks, targets, chunk_size = doc.get("kinds"), doc.get("chunks"), doc.get("targets"), doc.get("chunk_size")
    if (not all(isinstance(v, list) for v in cols.values()) or not isinstance(kinds, str) or not isinstance(chunks, str)
            or not isinstance(targets, list) or type(chunk_size) is not int or chunk_size <= 0):
        raise _refuse("malformed")
    paths = cols["paths"]
    n = len(paths)
    if any(len(v) != n for v in cols.values()) or len(kinds) != n or not set(kinds) <= {"d", "f", "l"}:
        raise _refuse("columns of different lengths or an unknown kind")
    if not set(map(type, paths)) <= {str}:
        raise _refuse("a path is not a string")
    joined = "\0".join(paths)
    if n and (joined.count("\0") != n - 1 or _bad_component("/" + joined.replace("\0", "/") + "/")):
        bad = next(p for p in paths if "\0" in p or _bad_component("/" + p + "/"))
        raise _refuse("not a relative path, or a '.', '..' or empty component", bad)
    if len(set(paths)) != n:
        seen: set[str] = set()
        raise _refuse("listed twice", next(p for p in paths if p in seen or seen.add(p)))
    dirs = {"", *(p for p, k in zip(paths, kinds) if k == "d")}
    if not {p.rpartition("/")[0] for p in paths} <= dirs:
        # Also what stops a restore from writing through a symlink: a symlink is never a parent.
        raise _refuse("its parent is not a directory of this snapshot", next(p for p in paths if p.rpartition("/")[0] not in dirs))
    if not (_ints(cols["modes"], 0, 0o7777) and _ints(cols["mtimes"], -(1 << 62), 1 << 62) and _ints(cols["sizes"], 0, 1 << 50)
            and _ints(cols["nchunks"], 0, 1 << 31)):
        raise _refuse("a mode, mtime, size or chunk count is out of range")
    sizes, nchunks = cols["sizes"], cols["nchunks"]
    if len(chunks) != 64 * sum(nchunks) or not _is_hex(chunks):
        raise _refuse("the chunk list does not match the chunk counts")
    for path, kind, size, count in zip(paths, kinds, sizes, nchunks):
        if (kind == "f" and size and not count) or (kind != "f" and (size or count)):
            raise _refuse("size and chunk count disagree", path)
    if (len(targets) != kinds.count("l") or not set(map(type, targets)) <= {str} or "" in targets
            or "\0" in "".join(targets)):
        raise _refuse("bad symlink targets")
    return Manifest(chunk_size, paths, kinds, cols["modes"], cols["mtimes"], sizes, nchunks, chunks, targets)
