"""Many byte streams over one message connection (the agent's WebSocket to the server).

Each stream has its own flow-control window: a sender may have at most ``WINDOW`` bytes in flight per stream,
and the receiver returns credit only as its consumer reads. So one stalled or busy stream never holds the
others back (tunnels that share one window collapse when two streams run at once).

A message is one frame: a 5-byte header (type, stream id) and a payload. Either side may open streams; the
server opens odd ids, the agent even ones, so ids never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("berth.tunnel")

HEADER = struct.Struct("!BI")
CREDIT = struct.Struct("!I")
OPEN, ACCEPT, DATA, MORE, EOF, RESET = 1, 2, 3, 4, 5, 6
WINDOW = 4 * 2**20            # bytes a sender may have unacknowledged on one stream
CHUNK = 256 * 2**10           # largest DATA payload
CREDIT_AFTER = 512 * 2**10    # the receiver returns credit once its consumer has read this much
MAX_TARGET = 4096             # an OPEN payload larger than this is refused


class StreamReset(ConnectionError):
    """The peer (or the connection's end) reset the stream; the message says why."""


class Stream:
    """One bidirectional byte stream. ``read()`` returns b"" at end of stream; ``write()`` waits for credit."""

    def __init__(self, mux: Mux, stream_id: int, target: dict[str, Any]):
        self.mux, self.id, self.target = mux, stream_id, target
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._eof_in = False
        self._eof_out = False
        self._reset: str | None = None
        self._credit = WINDOW
        self._writable = asyncio.Event()
        self._writable.set()
        self._consumed = 0
        self.bytes_in = 0   # received from the peer
        self.bytes_out = 0  # sent to the peer

    # --- consumer side
    async def read(self) -> bytes:
        while not self._buf:
            if self._reset is not None:
                raise StreamReset(self._reset)
            if self._eof_in:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._buf.popleft()
        self._buffered -= len(data)
        self._consumed += len(data)
        if self._consumed >= CREDIT_AFTER and self._reset is None:
            grant, self._consumed = self._consumed, 0
            await self.mux._send(MORE, self.id, CREDIT.pack(grant))
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._reset is not None:
                raise StreamReset(self._reset)
            if self._eof_out:
                raise StreamReset("write after end of stream")
            if self._credit <= 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            size = min(len(view), self._credit, CHUNK)
            self._credit -= size
            self.bytes_out += size
            await self.mux._send(DATA, self.id, view[:size])
            view = view[size:]

    async def write_eof(self) -> None:
        if not self._eof_out and self._reset is None:
            self._eof_out = True
            await self.mux._send(EOF, self.id)
            self._maybe_done()

    async def reset(self, reason: str = "closed") -> None:
        """Abort both directions and tell the peer why."""
        if self._reset is None:
            self._on_reset(reason)
            with contextlib.suppress(Exception):
                await self.mux._send(RESET, self.id, reason.encode()[:512])

    @property
    def closed(self) -> bool:
        return self._reset is not None or (self._eof_in and self._eof_out)

    # --- called by the mux
    def _on_data(self, data: bytes) -> None:
        if self._eof_in or self._reset is not None:
            return
        if self._buffered + len(data) > WINDOW:  # the peer ignored our window: it is broken or hostile
            asyncio.get_running_loop().create_task(self.reset("flow-control window exceeded"))
            return
        self._buf.append(data)
        self._buffered += len(data)
        self.bytes_in += len(data)
        self._readable.set()

    def _on_credit(self, grant: int) -> None:
        self._credit += grant
        self._writable.set()

    def _on_eof(self) -> None:
        self._eof_in = True
        self._readable.set()
        self._maybe_done()

    def _on_reset(self, reason: str) -> None:
        if self._reset is None:
            self._reset = reason or "reset"
            self._buf.clear()
            self._readable.set()
            self._writable.set()
            self.mux._forget(self.id)

    def _maybe_done(self) -> None:
        if self._eof_in and self._eof_out and not self._buf:
            self.mux._forget(self.id)


Acceptor = Callable[[Stream], Awaitable[None]]


class Mux:
    """The streams of one connection. Feed every incoming message to :meth:`handle`; ``send`` sends one message.

    ``accept(stream)`` runs (as a task) for each stream the peer opens; it must call :meth:`Stream.reset` with
    a reason to refuse, or ``stream.accept()``-equivalent :meth:`Mux.accepted` before using it.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], *, odd_ids: bool,
                 accept: Acceptor | None = None, name: str = "tunnel"):
        self._send_message = send
        self._lock = asyncio.Lock()
        self._next_id = 1 if odd_ids else 2
        self._streams: dict[int, Stream] = {}
        self._pending: dict[int, asyncio.Future] = {}
        self._accept = accept
        self._tasks: set[asyncio.Task] = set()
        self.name = name
        self.closed: str | None = None

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    async def _send(self, kind: int, stream_id: int, payload: bytes | memoryview = b"") -> None:
        if self.closed is not None:
            raise StreamReset(self.closed)
        message = HEADER.pack(kind, stream_id) + payload  # one copy; bytes + memoryview gives bytes
        async with self._lock:  # frames of concurrent writers must not interleave inside the transport
            await self._send_message(message)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    async def open(self, target: dict[str, Any], timeout: float = 15.0, wait: bool = True) -> Stream:
        """Open a stream to `target` on the peer; raises StreamReset with the peer's reason when refused.
        `wait=False` returns at once: what is written is held by the peer until it has connected the stream (one
        round trip saved), and a refusal then shows as StreamReset on the first read or write."""
        if self.closed is not None:
            raise StreamReset(self.closed)
        stream_id = self._next_id
        self._next_id += 2
        stream = Stream(self, stream_id, target)
        self._streams[stream_id] = stream
        answer = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = answer
        if not wait:
            await self._send(OPEN, stream_id, json.dumps(target).encode())
            return stream
        try:
            await self._send(OPEN, stream_id, json.dumps(target).encode())
            async with asyncio.timeout(timeout):
                reason = await answer
        except TimeoutError:
            await stream.reset("timed out")
            raise StreamReset(f"no answer from the {self.name} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(stream_id, None)
        if reason is not None:
            stream._on_reset(reason)
            raise StreamReset(reason)
        return stream

    async def accepted(self, stream: Stream) -> None:
        """Tell the peer its stream is ready (call from the acceptor before using the stream)."""
        await self._send(ACCEPT, stream.id)

    async def handle(self, message: bytes) -> None:
        if len(message) < HEADER.size:
            return
        kind, stream_id = HEADER.unpack_from(message)
        payload = message[HEADER.size:]
        stream = self._streams.get(stream_id)
        if kind == DATA:
            if stream is not None:
                stream._on_data(payload)
        elif kind == MORE:
            if stream is not None and len(payload) == CREDIT.size:
                stream._on_credit(CREDIT.unpack(payload)[0])
        elif kind == EOF:
            if stream is not None:
                stream._on_eof()
        elif kind == RESET:
            reason = payload.decode(errors="replace") or "reset by peer"
            future = self._pending.pop(stream_id, None)
            if future is not None and not future.done():
                future.set_result(reason)
            if stream is not None:
                stream._on_reset(reason)
        elif kind == ACCEPT:
            future = self._pending.pop(stream_id, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == OPEN:
            await self._on_open(stream_id, payload)

    async def _on_open(self, stream_id: int, payload: bytes) -> None:
        mine = (stream_id % 2 == 1) == (self._next_id % 2 == 1)
        if self._accept is None or mine or stream_id in self._streams or len(payload) > MAX_TARGET:
            await self._send(RESET, stream_id, b"refused")
            return
        try:
            target = json.loads(payload)
            if not isinstance(target, dict):
                raise ValueError
        except ValueError:
            await self._send(RESET, stream_id, b"bad target")
            return
        stream = Stream(self, stream_id, target)
        self._streams[stream_id] = stream
        task = asyncio.get_running_loop().create_task(self._run_acceptor(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_acceptor(self, stream: Stream) -> None:
        assert self._accept is not None
        try:
            await self._accept(stream)
        except StreamReset:
            pass
        except Exception as exc:  # one stream's failure never ends the tunnel
            log.warning("%s: stream %s failed: %s", self.name, stream.id, exc)
            await stream.reset("failed")

    def close(self, reason: str = "tunnel closed") -> None:
        """The connection ended: every stream is reset, every acceptor cancelled."""
        if self.closed is None:
            self.closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_result(reason)
        for stream in list(self._streams.values()):
            stream._on_reset(reason)
        for task in list(self._tasks):
            task.cancel()


async def pump(source: Callable[[], Awaitable[bytes]], sink: Callable[[bytes], Awaitable[None]],
               on_bytes: Callable[[bytes], None] | None = None) -> None:
    """Copy until the source says end (b"")."""
    while True:
        data = await source()
        if not data:
            return
        if on_bytes is not None:
            on_bytes(data)
        await sink(data)


async def bridge(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_client_bytes: Callable[[bytes], None] | None = None) -> None:
    """Join a stream and a socket until both directions end (or either breaks)."""

    async def to_socket() -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
        await pump(stream.read, write, on_client_bytes)
        if writer.can_write_eof():
            writer.write_eof()

    async def to_stream() -> None:
        await pump(lambda: reader.read(CHUNK), stream.write)
        await stream.write_eof()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(to_socket())
            group.create_task(to_stream())
    except BaseExceptionGroup:
        await stream.reset("connection ended")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
