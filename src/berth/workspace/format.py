"""Byte formats shared by agents and the server: chunk encoding, pack files, snapshot location tables.

A chunk is identified by the SHA-256 of its raw bytes (OpenSSL's SHA-256 uses the CPU's SHA extensions:
~1.1 GB/s a core here, three times BLAKE2b). It is stored zstd-compressed, or raw when compression does
not pay (media, checkpoints, archives).

Pack file, named by the SHA-256 of its header (which lists every chunk's id, sizes and codec, so it names
the content without hashing the data a second time; uploads are idempotent)::

    b"BERTHPK1" | u32 count | count × (32-byte chunk id, u32 length, u32 raw length, u8 codec) | blobs

Blobs follow the header in record order, so offsets are implied. Location table (one per snapshot,
written by the server at commit: where every chunk of the snapshot lives; packs are named by the
store's own ids)::

    b"BERTHLC1" | u32 packs | packs × (u8 length, ASCII name) | u32 chunks | chunks × (id, u32 pack index,
    u64 offset, u32 length, u32 raw length, u8 codec)
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass

import zstandard

CHUNK_SIZE = 4 << 20  # files larger than this are split into fixed chunks
PACK_SIZE = 16 << 20  # packs are sealed once they hold this much
MAX_PACK_BYTES = 96 << 20  # the server refuses larger uploads
MAX_RAW_CHUNK = 1 << 30
RAW, ZSTD = 0, 1
ZSTD_LEVEL = 1

_PACK_MAGIC = b"BERTHPK1"
_LOC_MAGIC = b"BERTHLC1"
_U32 = struct.Struct("<I")
_PACK_REC = struct.Struct("<32sIIB")
_LOC_REC = struct.Struct("<32sIQIIB")
_SAMPLE = 64 << 10
_local = threading.local()


class FormatError(ValueError):
    """Bytes that do not parse as the format they claim to be."""


def chunk_id(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _compressor() -> zstandard.ZstdCompressor:
    # One per thread: a ZstdCompressor must not be used by two threads at once.
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode_chunk(data: bytes) -> tuple[int, bytes]:
    """(codec, blob): zstd when it saves at least 3 %, else the raw bytes (no copy)."""
    n = len(data)
    if n < 64:
        return RAW, data
    c = _compressor()
    if n > 4 * _SAMPLE:
        # Incompressible data costs zstd as much as text does; a sample from the middle decides cheaply.
        mid = n // 2
        sample = data[mid:mid + _SAMPLE]
        if len(c.compress(sample)) > 0.9 * len(sample):
            return RAW, data
    blob = c.compress(data)
    if len(blob) < 0.97 * n:
        return ZSTD, blob
    return RAW, data


def encode_small(datas: list[bytes]) -> list[tuple[int, bytes]]:
    """encode_chunk for many small chunks in one call: zstd's batch API compresses them all with the GIL
    released once, where one call per 4 KB file would spend its time trading the GIL between threads."""
    todo = [i for i, d in enumerate(datas) if len(d) >= 64]
    out = [(RAW, d) for d in datas]
    if todo:
        blobs = _compressor().multi_compress_to_buffer([datas[i] for i in todo], threads=1)
        for k, i in enumerate(todo):
            seg = blobs[k]
            if len(seg) < 0.97 * len(datas[i]):
                out[i] = (ZSTD, seg.tobytes())
    return out


def decode_chunk(cid: str, codec: int, blob: bytes | memoryview, raw_length: int) -> bytes | memoryview | None:
    """The chunk's raw bytes, or None when they do not hash to `cid` (corrupt, truncated, wrong codec).
    A raw chunk comes back as the `blob` passed in (no copy)."""
    try:
        if codec == ZSTD:
            data = _decompressor().decompress(blob, max_output_size=raw_length)
        elif codec == RAW:
            data = blob
        else:
            return None
    except zstandard.ZstdError:
        return None
    if len(data) != raw_length or hashlib.sha256(data).hexdigest() != cid:
        return None
    return data


@dataclass(frozen=True, slots=True)
class PackChunk:
    id: str  # hex
    offset: int  # from the start of the pack file
    length: int
    raw_length: int
    codec: int


@dataclass(slots=True)
class Pack:
    """A pack kept as its parts (header, then blobs) so building and sending it copies no data."""

    digest: str  # hex SHA-256 of the header
    parts: list[bytes | memoryview]
    size: int
    chunks: list[PackChunk]

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def build_pack(items: list[tuple[str, int, bytes | memoryview, int]]) -> Pack:
    """items: (chunk id, codec, blob, raw length), in order."""
    header = [_PACK_MAGIC, _U32.pack(len(items))]
    header += [_PACK_REC.pack(bytes.fromhex(cid), len(blob), raw, codec) for cid, codec, blob, raw in items]
    head = b"".join(header)
    offset = len(head)
    chunks = []
    for cid, codec, blob, raw in items:
        chunks.append(PackChunk(cid, offset, len(blob), raw, codec))
        offset += len(blob)
    return Pack(hashlib.sha256(head).hexdigest(), [head] + [blob for _, _, blob, _ in items], offset, chunks)


def pack_header_length(start: bytes | memoryview) -> int | None:
    """How long the header of a pack beginning with `start` is (None: need at least 12 bytes)."""
    if len(start) < 12:
        return None
    return 12 + _U32.unpack_from(start, 8)[0] * _PACK_REC.size


def pack_digest(data: bytes | memoryview) -> str:
    """The name of a pack (call after parse_pack has checked the header)."""
    return hashlib.sha256(data[:pack_header_length(data)]).hexdigest()


def subset_pack(pack: Pack, keep: set[str]) -> Pack:
    """A new pack with only the chunks in `keep` (the server already has the others)."""
    blobs = pack.parts[1:]
    return build_pack([(c.id, c.codec, blob, c.raw_length) for c, blob in zip(pack.chunks, blobs) if c.id in keep])


def parse_pack(data: bytes | memoryview, total: int | None = None) -> list[PackChunk]:
    """The chunk records of a pack, checked to lie exactly inside it (`data` may be just the header
    when the pack's `total` size is given)."""
    total = len(data) if total is None else total
    if len(data) < 12 or bytes(data[:8]) != _PACK_MAGIC:
        raise FormatError("not a berth pack")
    (count,) = _U32.unpack_from(data, 8)
    offset = 12 + count * _PACK_REC.size
    if offset > len(data) or offset > total:
        raise FormatError("pack header is truncated")
    chunks = []
    for cid, length, raw, codec in _PACK_REC.iter_unpack(data[12:offset]):
        if codec not in (RAW, ZSTD) or raw > MAX_RAW_CHUNK or (codec == RAW and length != raw):
            raise FormatError("pack has an invalid chunk record")
        chunks.append(PackChunk(cid.hex(), offset, length, raw, codec))
        offset += length
    if offset != total:
        raise FormatError("pack size does not match its header")
    return chunks


@dataclass(frozen=True, slots=True)
class Location:
    pack: str  # name of the pack holding the chunk (the store's: a digest locally, an id on the server)
    offset: int
    length: int
    raw_length: int
    codec: int


def _read_pack_names(data: bytes) -> tuple[list[str], int]:
    """The pack list of a location table and where its chunk records start."""
    if data[:8] != _LOC_MAGIC:
        raise FormatError("not a berth location table")
    (npacks,) = _U32.unpack_from(data, 8)
    names, pos = [], 12
    for _ in range(npacks):
        n = data[pos]
        names.append(data[pos + 1:pos + 1 + n].decode("ascii"))
        pos += 1 + n
    return names, pos


def decode_locations(data: bytes) -> dict[str, Location]:
    try:
        packs, pos = _read_pack_names(data)
        (nchunks,) = _U32.unpack_from(data, pos)
        body = data[pos + 4:]
        if len(body) != nchunks * _LOC_REC.size:
            raise FormatError("location table is truncated")
        return {cid.hex(): Location(packs[p], off, length, raw, codec)
                for cid, p, off, length, raw, codec in _LOC_REC.iter_unpack(body)}
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise FormatError(f"location table does not parse: {exc}") from None


class LocationTableBuilder:
    """Builds a snapshot's location table from its parent's, whose records are copied as raw bytes
    (pack indices stay valid: new packs are appended to the parent's list). The server's commit then
    costs little more than the chunks that changed."""

    def __init__(self, parent: bytes | None, wanted: set[bytes]):
        self.packs: list[str] = []
        self.index: dict[str, int] = {}
        self.records: dict[bytes, bytes] = {}
        if not parent:
            return
        try:
            self.packs, pos = _read_pack_names(parent)
            (count,) = _U32.unpack_from(parent, pos)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise FormatError(f"location table does not parse: {exc}") from None
        self.index = {p: i for i, p in enumerate(self.packs)}
        body = parent[pos + 4:]
        size = _LOC_REC.size
        if len(body) != count * size:
            raise FormatError("location table is truncated")
        records = self.records
        for i in range(0, len(body), size):
            cid = body[i:i + 32]
            if cid in wanted:
                records[cid] = body[i:i + size]

    def add(self, cid: bytes, loc: Location) -> None:
        i = self.index.get(loc.pack)
        if i is None:
            i = self.index[loc.pack] = len(self.packs)
            self.packs.append(loc.pack)
        self.records[cid] = _LOC_REC.pack(cid, i, loc.offset, loc.length, loc.raw_length, loc.codec)

    def packs_used(self) -> set[str]:
        used = {rec[32:36] for rec in self.records.values()}
        return {self.packs[_U32.unpack(u)[0]] for u in used}

    def encode(self) -> bytes:
        names = [bytes([len(p)]) + p.encode("ascii") for p in self.packs]
        return b"".join([_LOC_MAGIC, _U32.pack(len(self.packs)), *names, _U32.pack(len(self.records)), *self.records.values()])
