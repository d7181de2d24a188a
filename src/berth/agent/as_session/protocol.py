"""Frames between a supervisor and its session-identity helper: a JSON header plus raw byte blobs.

No pickle: the helper runs as the session user, so whatever it sends is untrusted input to a root
process, and decoding must never run code. A frame is

    <u32 header length> <header JSON> <u32 blob count> (<u64 blob length> <blob>)*

``bytes`` anywhere in a message travel as blobs (no base64, no copy into the JSON) and come back as
``bytes``; everything else must be JSON. Sizes are bounded so a misbehaving peer cannot make the
other side allocate without limit.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

MAX_HEADER = 64 << 20
MAX_BLOBS = 16
MAX_BLOB = 512 << 20
_BLOB_KEY = "$blob"


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


# The walkers are module functions taking the blob list, not closures: a recursive closure refers to itself
# through its cell, so each frame's blobs would live until the cyclic GC ran (a snapshot held ~1 GB of packs).

def _to_json(value: Any, blobs: list) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(value if not isinstance(value, bytearray) else bytes(value))
        return {_BLOB_KEY: len(blobs) - 1}
    if isinstance(value, dict):
        return {str(k): _to_json(v, blobs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, blobs) for v in value]
    return value


def encode(message: dict[str, Any]) -> list[bytes | memoryview]:
    """The frame for `message` as a list of buffers (blobs are not copied)."""
    blobs: list[bytes | memoryview] = []
    header = json.dumps(_to_json(message, blobs), separators=(",", ":"), allow_nan=False).encode()
    parts: list[bytes | memoryview] = [struct.pack("<I", len(header)), header, struct.pack("<I", len(blobs))]
    for blob in blobs:
        parts += [struct.pack("<Q", memoryview(blob).nbytes), blob]
    return parts


def _from_json(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_BLOB_KEY}:
            index = value[_BLOB_KEY]
            if not isinstance(index, int) or not 0 <= index < len(blobs):
                raise ProtocolError("blob reference out of range")
            return blobs[index]
        return {k: _from_json(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, blobs) for v in value]
    return value


def _decode(header: bytes, blobs: list[bytes]) -> dict[str, Any]:
    try:
        message = json.loads(header)
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("header is not an object")
    return _from_json(message, blobs)


async def read_frame(readexactly: Callable[[int], Awaitable[bytes]]) -> dict[str, Any]:
    """One message, reading with an async `readexactly` (asyncio.StreamReader.readexactly)."""
    (length,) = struct.unpack("<I", await readexactly(4))
    if length > MAX_HEADER:
        raise ProtocolError(f"header of {length} bytes is over the limit")
    header = await readexactly(length)
    (count,) = struct.unpack("<I", await readexactly(4))
    if count > MAX_BLOBS:
        raise ProtocolError(f"{count} blobs in one frame is over the limit")
    blobs = []
    for _ in range(count):
        (size,) = struct.unpack("<Q", await readexactly(8))
        if size > MAX_BLOB:
            raise ProtocolError(f"blob of {size} bytes is over the limit")
        blobs.append(await readexactly(size))
    return _decode(header, blobs)


def read_frame_blocking(stream) -> dict[str, Any]:
    """The same from a blocking binary file (the helper's stdin): an EOF raises EOFError."""

    async def readexactly(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise EOFError("the peer closed the channel")
        return data

    # A coroutine that never awaits anything real runs to completion in one send().
    coro = read_frame(readexactly)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("read_frame suspended without an event loop")  # pragma: no cover
