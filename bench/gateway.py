"""The gateway and the agent tunnel, each figure next to the same work done directly in the same run (issue #10).

    .venv/bin/python bench/gateway.py [--pg URL] [--copy-mb 200] [--requests 300] [--seconds 5]
                                      [--only mux,ssh,http,desktop]

A real server and agent (the tests' Stack; SQLite, or PostgreSQL with --pg), run as root (per-session users).
1. mux: bench/tunnel_mux.py, the multiplexing layer's own evidence (berth's framing vs SSH channels).
2. ssh: `--copy-mb` MB piped into `cat > /dev/null` in an SSH Session, timed from the remote shell's first output
   to the end: `berth ssh ID` (ProxyCommand `berth ssh-proxy`: the gateway's /s/<id>/ssh and the worker's tunnel)
   vs `berth ssh --direct ID` (the same ssh client straight to the session's port), best of `--repeat`.
   Target >= 0.7x. Then two copies at once through the tunnel: each one's MB/s as a share of one alone (>= 40 %).
3. http: a keep-alive HTTP + WebSocket echo app started in the session as its user on $BERTH_APP_PORT; `--requests`
   small GETs from one kept-alive client (bearer token) through /s/<id>/app/ vs straight to 127.0.0.1:$BERTH_APP_PORT,
   and as many WebSocket round trips of a 32-byte message on one connection each way, the two paths alternated
   request by request so the machine's noise hits both alike. p50/p95; target: <= 2 ms added at p50.
4. desktop (bench/desktop_fps.py): a Remote Desktop in Chromium through noVNC, gateway vs a direct WebSocket bridge
   to its VNC socket: fps of a moving solid square (>= 55) and of a moving noise texture (>= 30 fps at <= 40 Mbps),
   click -> pixel-change latency (p95 <= 40 ms); the gateway costs <= 10 % of fps and <= 5 ms of p50 latency.
Prints each section as it goes, then one summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect as ws_connect

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))
from conftest import Stack, make_database_url  # noqa: E402  (the same real server + agent the tests use)

BLOCK = b"\0" * (1 << 20)
SUMMARY: list[tuple[str, str, str, str, str, bool | None]] = []  # section, figure, gateway, direct, vs target, ok

ECHO_APP = r'''
import asyncio, base64, hashlib, os

async def websocket(reader, writer, key):
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        b1, b2 = await reader.readexactly(2)
        opcode, n = b1 & 15, b2 & 127
        if n >= 126:
            n = int.from_bytes(await reader.readexactly(2 if n == 126 else 8), "big")
        mask = await reader.readexactly(4) if b2 & 128 else b"\0\0\0\0"
        data = bytes(c ^ mask[i & 3] for i, c in enumerate(await reader.readexactly(n)))
        if opcode == 8:
            writer.write(b"\x88\x02\x03\xe8")
            await writer.drain()
            return
        if opcode in (1, 2) and n < 126:
            writer.write(bytes([0x80 | opcode, n]) + data)
            await writer.drain()

async def handle(reader, writer):
    try:
        while line := await reader.readline():
            headers = {}
            while (h := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("upgrade", "").lower() == "websocket":
                return await websocket(reader, writer, headers["sec-websocket-key"])
            await reader.readexactly(int(headers.get("content-length") or 0))
            close = headers.get("connection", "").lower() == "close"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                         + (b"Connection: close\r\n" if close else b"") + b"\r\npong\n")
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["BERTH_APP_PORT"]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p50_p95(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[-1]


def row(section: str, figure: str, gateway: str, direct: str, versus: str, ok: bool | None) -> None:
    SUMMARY.append((section, figure, gateway, direct, versus, ok))


# --- 1. mux ---------------------------------------------------------------------------------------

def mux_section(mb: int) -> None:
    import tunnel_mux

    print(f"\n== 1. multiplexing layer (bench/tunnel_mux.py, {mb} MB per stream)")
    results = tunnel_mux.measure(mb)
    tunnel_mux.report(results)
    one = results["mux x1"][0] / results["ssh x1"][0]
    share = min(results["mux x2"]) / results["mux x1"][0]
    row("mux", "one stream MB/s (berth | SSH)", f"{results['mux x1'][0]:.0f}", f"{results['ssh x1'][0]:.0f}",
        f"{one:.2f}x", None)
    row("mux", "slower of two streams / one alone", f"{share:.0%}", "", "fair: 50%", share >= 0.4)


# --- 2. SSH copies ---------------------------------------------------------------------------------

def ssh_copy(stack: Stack, session_id: str, mb: int, direct: bool) -> float:
    """MB/s of `mb` MB into `cat > /dev/null` in the session, from the remote shell's first line to the end."""
    argv = stack.cli_cmd("ssh", *(["--direct"] if direct else []), session_id, "--", "echo ready; exec cat > /dev/null")
    proc = subprocess.Popen(argv, env=stack.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise SystemExit(f"berth ssh{' --direct' if direct else ''} failed: {proc.stderr.read().decode()[-800:]}")
    t0 = time.perf_counter()
    for _ in range(mb):
        proc.stdin.write(BLOCK)
    proc.stdin.close()
    if proc.wait(300) != 0:
        raise SystemExit(f"the copy ended with status {proc.returncode}: {proc.stderr.read().decode()[-800:]}")
    return mb / (time.perf_counter() - t0)


def ssh_section(stack: Stack, session_id: str, mb: int, repeat: int) -> None:
    print(f"\n== 2. SSH copy, {mb} MB into `cat > /dev/null` (best of {repeat})")
    tunnel, direct = [], []
    for _ in range(repeat):  # alternated: the machine's noise hits both alike
        tunnel.append(ssh_copy(stack, session_id, mb, direct=False))
        direct.append(ssh_copy(stack, session_id, mb, direct=True))
    ratio = max(tunnel) / max(direct)
    print(f"  through the tunnel {max(tunnel):7.1f} MB/s   (runs: {', '.join(f'{r:.0f}' for r in tunnel)})")
    print(f"  direct SSH         {max(direct):7.1f} MB/s   (runs: {', '.join(f'{r:.0f}' for r in direct)})")
    print(f"  ratio {ratio:.2f}x   target >= 0.7x [{'ok' if ratio >= 0.7 else 'MISS'}]")
    row("ssh", f"{mb} MB copy, MB/s", f"{max(tunnel):.0f}", f"{max(direct):.0f}", f"{ratio:.2f}x (>= 0.7x)", ratio >= 0.7)

    rates: list[float] = [0.0, 0.0]

    def one(i: int) -> None:
        rates[i] = ssh_copy(stack, session_id, mb, direct=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shares = [r / max(tunnel) for r in rates]
    ok = min(shares) >= 0.4
    print(f"  two copies at once through the tunnel: {rates[0]:.1f} and {rates[1]:.1f} MB/s = "
          f"{shares[0]:.0%} and {shares[1]:.0%} of one alone   target each >= 40 % [{'ok' if ok else 'MISS'}]")
    row("ssh", "two copies at once, each / one alone", " / ".join(f"{s:.0%}" for s in shares), "", "each >= 40 %", ok)


# --- 3. HTTP and WebSocket latency -----------------------------------------------------------------

def start_echo_app(stack: Stack, session_id: str) -> int:
    """The echo app in the session, as its user, detached from the ssh that starts it; returns its port."""
    command = ("cat > bench_echo.py && (setsid nohup /usr/bin/python3 bench_echo.py > bench_echo.log 2>&1 < /dev/null &)"
               " && echo $BERTH_APP_PORT")
    proc = stack.cli("ssh", session_id, "--", command, input=ECHO_APP, timeout=60)
    port = int(proc.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/ping").raise_for_status()
            return port
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit("the echo app did not answer on $BERTH_APP_PORT") from None
            time.sleep(0.1)


def alternated(*calls, runs: int) -> list[list[float]]:
    """ms per call of each, warmed up, then alternated call by call."""
    for _ in range(20):
        for fn in calls:
            fn()
    out: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for fn, times in zip(calls, out):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return out


def latency_row(what: str, gateway: list[float], direct: list[float]) -> None:
    (g50, g95), (d50, d95) = p50_p95(gateway), p50_p95(direct)
    added = g50 - d50
    print(f"  {what:<22} gateway p50 {g50:6.2f} p95 {g95:6.2f} ms   direct p50 {d50:6.2f} p95 {d95:6.2f} ms   "
          f"added p50 {added:+.2f} ms   target <= 2 ms [{'ok' if added <= 2 else 'MISS'}]")
    row("http", f"{what}, p50 / p95 ms", f"{g50:.2f} / {g95:.2f}", f"{d50:.2f} / {d95:.2f}",
        f"{added:+.2f} ms (<= 2 ms)", added <= 2)


def http_section(stack: Stack, session_id: str, requests: int) -> None:
    print(f"\n== 3. gateway latency, {requests} small requests each way, alternated")
    port = start_echo_app(stack, session_id)
    auth = {"Authorization": f"Bearer {stack.token}"}
    with httpx.Client(base_url=stack.url, headers=auth) as via, httpx.Client(base_url=f"http://127.0.0.1:{port}") as to:
        def get(client: httpx.Client, path: str):
            return lambda: client.get(path).raise_for_status()
        # context: an API request authorized the same way (token, user, session, worker read from the database)
        gateway, direct, api = alternated(get(via, f"/s/{session_id}/app/ping"), get(to, "/ping"),
                                          get(via, f"/api/v1/sessions/{session_id}"), runs=requests)
    latency_row("HTTP GET", gateway, direct)
    a50, a95 = p50_p95(api)
    print(f"  {'(API GET, context)':<22} p50 {a50:6.2f} p95 {a95:6.2f} ms: what authorizing any request costs here")
    row("http", "(context) API GET session, p50 / p95 ms", f"{a50:.2f} / {a95:.2f}", "", "", None)

    ws_url = stack.url.replace("http://", "ws://", 1)
    with ws_connect(f"{ws_url}/s/{session_id}/app/ws", additional_headers=auth, compression=None) as via, \
            ws_connect(f"ws://127.0.0.1:{port}/ws", compression=None) as to:
        message = "x" * 32

        def echo(ws):
            def once():
                ws.send(message)
                if ws.recv(timeout=10) != message:
                    raise SystemExit("the echo app answered something else")
            return once
        gateway, direct = alternated(echo(via), echo(to), runs=requests)
    latency_row("WebSocket round trip", gateway, direct)


# --- 4. desktop ------------------------------------------------------------------------------------

def desktop_section(stack: Stack, page_port: int, seconds: float, qualities: list[int], click_count: int) -> None:
    import desktop_fps as d

    print(f"\n== 4. desktop in Chromium (noVNC), gateway vs direct, {seconds:g} s per figure")
    config = {"name": "bench-desk", "type": "desktop"}
    view = stack.api("POST", "/api/v1/sessions", json={"app": "remote-desktop", "config": config})
    stack.wait_status(view["id"], "active", "idle", timeout=120)
    desktop = d.find_desktop(view["id"], stack.tmp / "agent-bench")
    results = d.measure(desktop, stack.url, stack.token, page_port, seconds, qualities, click_count)
    for mode, target in (("solid", 55), ("noise", d.NOISE_FPS)):
        for quality in qualities:
            if (mode, quality, "gateway") not in results:
                continue
            g, r = results[(mode, quality, "gateway")], results[(mode, quality, "direct")]
            cost = 1 - g["fps"] / r["fps"] if r["fps"] else 0.0
            fps_ok = g["fps"] >= target and cost <= 0.10
            mbps_ok = mode == "solid" or g["mbps"] <= d.NOISE_MBPS
            print(f"  {mode:<5} q{quality}  gateway {g['fps']:5.1f} fps {g['mbps']:6.2f} Mbps   direct {r['fps']:5.1f} fps "
                  f"{r['mbps']:6.2f} Mbps   (page frames/s {g['raf']:.0f} / {r['raf']:.0f})   gateway costs {cost:+.0%} "
                  f"of fps   target >= {target} fps{'' if mode == 'solid' else f' at <= {d.NOISE_MBPS} Mbps'}, "
                  f"<= 10 % [{'ok' if fps_ok and mbps_ok else 'MISS'}]")
            row("desktop", f"{mode} q{quality} fps", f"{g['fps']:.1f}", f"{r['fps']:.1f}",
                f"{-cost:+.0%} (>= {target} fps, cost <= 10 %)", fps_ok)
            if mode == "noise":
                row("desktop", f"noise q{quality} Mbps", f"{g['mbps']:.1f}", f"{r['mbps']:.1f}", f"<= {d.NOISE_MBPS}", mbps_ok)
    (g50, g95), (r50, r95) = d.p50_p95(results[("click", "gateway")]), d.p50_p95(results[("click", "direct")])
    ok = g95 <= 40 and g50 - r50 <= 5
    print(f"  click -> pixel  gateway p50 {g50:.1f} p95 {g95:.1f} ms   direct p50 {r50:.1f} p95 {r95:.1f} ms   "
          f"added p50 {g50 - r50:+.1f} ms   target p95 <= 40 ms, <= 5 ms added [{'ok' if ok else 'MISS'}]")
    row("desktop", f"click latency p50 / p95 ms (x{click_count})", f"{g50:.1f} / {g95:.1f}", f"{r50:.1f} / {r95:.1f}",
        f"{g50 - r50:+.1f} ms (p95 <= 40, added <= 5)", ok)


# --- the run ---------------------------------------------------------------------------------------

def print_summary() -> None:
    print("\n== summary (gateway = through berth's gateway and tunnel; direct = the same work without them)")
    header = ("section", "figure", "gateway", "direct", "vs direct (target)", "")
    widths = [max(len(str(r[i])) for r in [header, *SUMMARY]) for i in range(5)]
    for r in [header, *SUMMARY]:
        mark = {True: "ok", False: "MISS", None: ""}.get(r[5], r[5])
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths)) + "  " + mark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=None, help="PostgreSQL admin URL (default: SQLite)")
    parser.add_argument("--copy-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2, help="SSH copies per path (the best counts)")
    parser.add_argument("--mux-mb", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0, help="per desktop fps figure")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--qualities", default="5,3",
                        help="noVNC qualityLevel values (5: what the desktop page uses; 6: noVNC's default): the first "
                             "always, the next ones only while noise misses its targets")
    parser.add_argument("--only", default="mux,ssh,http,desktop")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := only - {"mux", "ssh", "http", "desktop"}:
        raise SystemExit(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (per-session users, and the bench reads the desktop's environment)")
    qualities = [int(q) for q in args.qualities.split(",")]

    if "mux" in only:
        mux_section(args.mux_mb)
    if only & {"ssh", "http", "desktop"}:
        page_port = free_port()
        # the bench page (another port) may open gateway WebSockets; set before the server starts
        os.environ["BERTH_GATEWAY_ORIGINS"] = json.dumps([f"http://127.0.0.1:{page_port}"])
        tmp = Path(tempfile.mkdtemp(prefix="berth-bench-gw-"))
        stack = Stack(tmp, make_database_url(args.pg))
        try:
            stack.start_server()
            stack.login()
            stack.start_agent(name="bench")
            print(f"\nserver {stack.url} on {'PostgreSQL' if args.pg else 'SQLite'}, one agent")
            if only & {"ssh", "http"}:
                view = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "bench-ssh"}})
                sid = stack.wait_status(view["id"], "active", "idle", timeout=120)["id"]
                if "ssh" in only:
                    ssh_section(stack, sid, args.copy_mb, args.repeat)
                if "http" in only:
                    http_section(stack, sid, args.requests)
            if "desktop" in only:
                desktop_section(stack, page_port, args.seconds, qualities, args.clicks)
        finally:
            stack.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print_summary()


if __name__ == "__main__":
    main()
