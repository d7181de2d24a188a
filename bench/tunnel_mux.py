"""Which multiplexing layer the agent tunnel uses, decided on figures: berth's own framing (berth.tunnel.mux:
per-stream credit windows over one WebSocket) next to SSH channels (asyncssh, the well-kept protocol library
some tunnels put over their WebSocket), same run, same machine.

    .venv/bin/python bench/tunnel_mux.py [--mb 200]

Each layer carries `--mb` MB on one stream alone, then on two streams at once (each stream's own throughput;
fair sharing means each gets about half). The SSH side runs over plain loopback TCP: its best case (over a
WebSocket it would add the WebSocket's framing to its own). The receiving side runs in a second process, as
the server and the agent do. Prints MB/s per case and the ratio berth/SSH.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import asyncssh  # noqa: E402
import websockets  # noqa: E402

from berth.tunnel.mux import Mux, Stream  # noqa: E402

BLOCK = b"\0" * (256 * 1024)


# --- receivers (the "agent" process) ------------------------------------------------------------

async def _sink(stream: Stream) -> None:
    await stream.mux.accepted(stream)
    total = 0
    while data := await stream.read():
        total += len(data)
    await stream.write(str(total).encode())
    await stream.write_eof()


async def _mux_server(port: int, ready) -> None:
    async def handler(ws):
        mux = Mux(ws.send, odd_ids=False, accept=_sink, name="bench")
        async for message in ws:
            await mux.handle(message)
        mux.close()
    async with websockets.serve(handler, "127.0.0.1", port, max_size=1 << 20, compression=None, write_limit=2**20):
        ready.set()
        await asyncio.Future()


class _SinkSession(asyncssh.SSHTCPSession):
    def __init__(self):
        self.total = 0

    def data_received(self, data, datatype):
        self.total += len(data)

    def eof_received(self):
        self._chan.write(str(self.total).encode())
        self._chan.write_eof()
        return False

    def connection_made(self, chan):
        self._chan = chan


class _SshServer(asyncssh.SSHServer):
    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return _SinkSession()

    def begin_auth(self, username):
        return False


async def _ssh_server(port: int, key_path: str, ready) -> None:
    await asyncssh.listen("127.0.0.1", port, server_host_keys=[key_path], server_factory=_SshServer,
                          window=4 * 2**20, max_pktsize=256 * 1024)
    ready.set()
    await asyncio.Future()


def _serve(kind: str, port: int, key_path: str, ready) -> None:
    asyncio.run(_mux_server(port, ready) if kind == "mux" else _ssh_server(port, key_path, ready))


# --- senders (the "server" process) -------------------------------------------------------------

async def _send(write, write_eof, read, size: int) -> float:
    t0 = time.perf_counter()
    sent = 0
    while sent < size:
        await write(BLOCK)
        sent += len(BLOCK)
    await write_eof()
    answer = await read()
    assert int(answer) == sent, answer
    return size / 2**20 / (time.perf_counter() - t0)


async def run_mux(port: int, size: int, streams: int) -> list[float]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=1 << 20, compression=None,
                                  write_limit=2**20) as ws:
        mux = Mux(ws.send, odd_ids=True, name="bench")
        reader = asyncio.create_task(_feed(ws, mux))
        opened = [await mux.open({"session": "bench"}) for _ in range(streams)]
        rates = await asyncio.gather(*(_send(s.write, s.write_eof, s.read, size) for s in opened))
        reader.cancel()
        return list(rates)


async def _feed(ws, mux: Mux) -> None:
    async for message in ws:
        await mux.handle(message)


async def run_ssh(port: int, size: int, streams: int) -> list[float]:
    async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="bench", password="x",
                                window=4 * 2**20, max_pktsize=256 * 1024) as conn:
        pairs = [await conn.open_connection("sink", 1) for _ in range(streams)]

        async def one(reader, writer):
            async def write(data):
                writer.write(data)
                await writer.drain()

            async def write_eof():
                writer.write_eof()
            return await _send(write, write_eof, reader.read, size)
        return list(await asyncio.gather(*(one(r, w) for r, w in pairs)))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mb: int) -> dict[str, list[float]]:
    import tempfile

    key_path = str(Path(tempfile.mkdtemp(prefix="berth-bench-mux-")) / "hostkey")
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key_path)
    results: dict[str, list[float]] = {}
    for kind, runner in (("mux", run_mux), ("ssh", run_ssh)):
        port, ready = _free_port(), multiprocessing.Event()
        proc = multiprocessing.Process(target=_serve, args=(kind, port, key_path, ready), daemon=True)
        proc.start()
        ready.wait(20)
        try:
            results[f"{kind} x1"] = asyncio.run(runner(port, mb * 2**20, 1))
            results[f"{kind} x2"] = asyncio.run(runner(port, mb * 2**20, 2))
        finally:
            proc.terminate()
            proc.join(5)
    return results


def report(results: dict[str, list[float]]) -> None:
    print(f"{'layer':<28}{'stream MB/s':>14}")
    names = {"mux": "berth framing over WS", "ssh": "SSH channels (asyncssh)"}
    for key, rates in results.items():
        kind, count = key.split()
        print(f"{names[kind] + ' ' + count:<28}{' / '.join(f'{r:.0f}' for r in rates):>14}")
    one = results["mux x1"][0] / results["ssh x1"][0]
    two = sum(results["mux x2"]) / sum(results["ssh x2"])
    share = min(results["mux x2"]) / results["mux x1"][0]
    print(f"berth/SSH: one stream {one:.2f}x, two streams {two:.2f}x; berth's slower stream of two gets "
          f"{share:.0%} of one alone (fair share: 50%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    report(measure(args.mb))


if __name__ == "__main__":
    main()
