"""The tunnel's multiplexing on its own: two Muxes joined by in-memory queues (the transport is a message pipe)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from berth.tunnel import mux as m
from berth.tunnel.mux import Mux, Stream, StreamReset


class Pair:
    """A server-side Mux (opens streams) and an agent-side Mux (accepts them), joined by two queues."""

    def __init__(self, accept):
        self.to_agent: asyncio.Queue = asyncio.Queue()
        self.to_server: asyncio.Queue = asyncio.Queue()
        self.server = Mux(self._put(self.to_agent), odd_ids=True, name="agent")
        self.agent = Mux(self._put(self.to_server), odd_ids=False, accept=accept, name="server")
        self.tasks = [asyncio.create_task(self._pump(self.to_agent, self.agent)),
                      asyncio.create_task(self._pump(self.to_server, self.server))]

    @staticmethod
    def _put(queue):
        async def send(message):
            await queue.put(bytes(message))
        return send

    @staticmethod
    async def _pump(queue, mux):
        while True:
            await mux.handle(await queue.get())

    async def close(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def echo(stream: Stream) -> None:
    await stream.mux.accepted(stream)
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def read_all(stream: Stream) -> bytes:
    out = bytearray()
    while data := await stream.read():
        out += data
    return bytes(out)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_echo_and_end_of_stream():
    async def main():
        pair = Pair(echo)
        stream = await pair.server.open({"session": "a", "service": "x"})
        payload = bytes(range(256)) * 40_000  # 10 MB: many chunks and credit returns
        writer = asyncio.create_task(stream.write(payload))
        reader = asyncio.create_task(read_all(stream))
        await writer
        await stream.write_eof()
        assert await reader == payload
        assert pair.server.stream_count == 0 and pair.agent.stream_count == 0  # both directions ended: forgotten
        await pair.close()
    run(main())


def test_a_stalled_stream_does_not_hold_back_another():
    """Stream 1's consumer never reads: its sender stops at one window; stream 2 still flows at full speed."""
    async def main():
        parked: list[Stream] = []

        async def accept(stream):
            await stream.mux.accepted(stream)
            if stream.target["service"] == "stall":
                parked.append(stream)  # never read
                await asyncio.Event().wait()
            await echo_after_accept(stream)

        async def echo_after_accept(stream):
            while data := await stream.read():
                await stream.write(data)
            await stream.write_eof()

        pair = Pair(accept)
        stalled = await pair.server.open({"service": "stall"})
        blocked = asyncio.create_task(stalled.write(b"x" * (m.WINDOW * 3)))
        await asyncio.sleep(0.2)
        assert not blocked.done()  # waiting for credit that never comes
        assert stalled.bytes_out == m.WINDOW
        busy = await pair.server.open({"service": "echo"})
        payload = b"y" * (m.WINDOW * 4)
        writer = asyncio.create_task(busy.write(payload))
        got = await read_all_until(busy, len(payload))
        await writer
        assert got == payload
        blocked.cancel()
        await pair.close()
    run(main())


async def read_all_until(stream: Stream, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += await stream.read()
    return bytes(out)


def test_refusal_carries_the_reason_and_no_stream_is_left():
    async def main():
        async def refuse(stream):
            await stream.reset("session abc has no 'vnc' service here")
        pair = Pair(refuse)
        with pytest.raises(StreamReset, match="no 'vnc' service"):
            await pair.server.open({"service": "vnc"})
        assert pair.server.stream_count == 0
        await pair.close()
    run(main())


def test_a_peer_ignoring_the_window_gets_the_stream_reset():
    async def main():
        pair = Pair(echo)
        stream = await pair.server.open({"service": "x"})
        target = pair.agent._streams[stream.id]
        # a hostile sender: data beyond the window, never waiting for credit
        for _ in range(m.WINDOW // m.CHUNK + 2):
            await pair.server._send(m.DATA, stream.id, b"z" * m.CHUNK)
        await asyncio.sleep(0.1)
        assert target.closed
        with pytest.raises(StreamReset, match="window"):
            await read_all(stream)
        await pair.close()
    run(main())


def test_connection_loss_resets_every_stream_and_pending_open():
    async def main():
        async def slow(stream):
            await asyncio.Event().wait()  # never answers
        pair = Pair(slow)
        pending = asyncio.create_task(pair.server.open({"service": "x"}, timeout=10))
        await asyncio.sleep(0.05)
        pair.server.close("the worker's tunnel closed")
        with pytest.raises(StreamReset, match="tunnel closed"):
            await pending
        with pytest.raises(StreamReset):
            await pair.server.open({"service": "y"})
        await pair.close()
    run(main())


def test_open_from_the_wrong_side_or_garbage_is_refused():
    async def main():
        pair = Pair(echo)
        # the agent side (even ids) has no acceptor on the server side: refused, not crashed
        with pytest.raises(StreamReset, match="refused"):
            await pair.agent.open({"service": "x"})
        await pair.agent._send(m.OPEN, 99, b"[not a dict]")  # odd id from the agent: not its to open
        await pair.server.handle(b"\x01")  # shorter than a header: ignored
        stream = await pair.server.open({"service": "still-works"})
        await stream.write(b"ok")
        assert await stream.read() == b"ok"
        with contextlib.suppress(StreamReset):
            await stream.reset()
        await pair.close()
    run(main())
