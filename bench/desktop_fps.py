"""The desktop part of bench/gateway.py: one Remote Desktop session seen in Chromium through noVNC, once through
the gateway (`ws://<server>/s/<id>/vnc`, the token as a WebSocket subprotocol) and once directly (a WebSocket
bridge in this process to the session's VNC unix socket), with the same bench page for both.

In the session, as its user (DISPLAY/XAUTHORITY as the desktop's xterm has them), a Tk program draws:
- `solid` / `noise`: a 256 px square (one colour / random pixels) moving 8 px every 16 ms across a strip of the
  screen. The square moves inside a fixed window rather than as a moving window: X moves a window by copying
  its pixels, which VNC sends as a cheap CopyRect, so a moving window of noise would not test the encoder;
  a moving image inside a window is re-encoded every frame (the worst case, like scrolling a photo);
- `click`: a still square that changes colour on each mouse click.
The page (noVNC's RFB on a div, no scaling, no resize) samples a row of the canvas on every animation frame:
frames per second in which it changed, bytes per second received on the WebSocket; for clicks, the time from
the canvas's mousedown to the first animation frame where the clicked pixel's colour changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

NOVNC = Path(__file__).resolve().parents[1] / "node_modules" / "@novnc" / "novnc"
SCREEN = (1280, 800)        # Xvnc's geometry: the page neither scales nor resizes it
SIZE, STRIP_Y = 256, 420    # the moving square and the top of its strip
CLICK = (1000, 120, 120)    # the click square: x, y, size
NOISE_FPS, NOISE_MBPS = 30, 40  # issue #10's targets for the noise texture

TK_PROGRAM = r'''
import random, sys, tkinter as tk
mode, size, y0, cx, cy, csize = sys.argv[1], *map(int, sys.argv[2:7])
root = tk.Tk()
root.overrideredirect(True)
root.attributes("-topmost", True)
if mode == "click":
    root.geometry(f"{csize}x{csize}+{cx}+{cy}")
    canvas = tk.Canvas(root, width=csize, height=csize, highlightthickness=0, bg="#0000ff")
    colours = ["#0000ff", "#ff0000"]
    def clicked(event):
        colours.reverse()
        canvas.configure(bg=colours[0])
    canvas.bind("<ButtonPress-1>", clicked)
else:
    width = root.winfo_screenwidth()
    root.geometry(f"{width}x{size}+0+{y0}")
    canvas = tk.Canvas(root, width=width, height=size, highlightthickness=0, bg="#202020")
    if mode == "solid":
        item = canvas.create_rectangle(0, 0, size, size, fill="#ff8000", width=0)
    else:
        image = tk.PhotoImage(width=size, height=size)
        image.put(" ".join("{" + " ".join("#%06x" % random.getrandbits(24) for _ in range(size)) + "}"
                           for _ in range(size)))
        item = canvas.create_image(0, 0, image=image, anchor="nw")
    state = {"x": 0, "dx": 8}
    def step():
        if not 0 <= state["x"] + state["dx"] <= width - size:
            state["dx"] = -state["dx"]
        state["x"] += state["dx"]
        canvas.move(item, state["dx"], 0)
        root.after(16, step)
    root.after(16, step)
canvas.pack()
print("ready", flush=True)
root.mainloop()
'''

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>berth desktop bench</title>
<style>html, body { margin: 0; background: #000; } #screen { width: %(w)dpx; height: %(h)dpx; }</style></head>
<body><div id="screen"></div><script type="module">
import RFB from "/novnc/core/rfb.js";
const params = new URLSearchParams(location.search);
let bytes = 0;
const Native = window.WebSocket;  // counts what noVNC receives (the same on both paths); a native object, as noVNC checks
function Counted(url, protocols) {
  const ws = new Native(url, protocols);
  ws.addEventListener("message", (e) => { bytes += e.data.byteLength || e.data.size || e.data.length || 0; });
  return ws;
}
Object.assign(Counted, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3, prototype: Native.prototype });
window.WebSocket = Counted;
const B = window.bench = { connected: false, error: null, strip: null, clicks: [], pending: null };
// the subprotocols (the gateway's carries the token) come from an init script, never the URL
const rfb = new RFB(document.getElementById("screen"), params.get("ws"), { wsProtocols: window.benchProtocols });
rfb.qualityLevel = Number(params.get("quality"));
rfb.scaleViewport = false;
rfb.resizeSession = false;
rfb.addEventListener("connect", () => { B.connected = true; });
rfb.addEventListener("disconnect", (e) => { B.error = "disconnected (clean: " + e.detail.clean + ")"; });
let ctx = null, previous = null;
const canvas = () => document.querySelector("#screen canvas");
function colourAt(x, y) { const d = ctx.getImageData(x, y, 1, 1).data; return (d[0] << 16) | (d[1] << 8) | d[2]; }
function signature(d) {
  let h = 0;
  for (let i = 0; i < d.length; i += 4) h = (Math.imul(h, 31) + (d[i] | (d[i + 1] << 8) | (d[i + 2] << 16))) | 0;
  return h;
}
B.start = (y) => {
  Object.assign(B, { strip: y, frames: 0, changed: 0, bytes0: bytes, t0: performance.now() });
  previous = null;
};
B.stop = () => {
  const r = { frames: B.frames, changed: B.changed, seconds: (performance.now() - B.t0) / 1000, bytes: bytes - B.bytes0 };
  B.strip = null;
  return r;
};
function tick() {
  const c = canvas();
  if (c && c.width) {
    ctx = ctx || c.getContext("2d");
    if (B.strip !== null) {
      const s = signature(ctx.getImageData(0, B.strip, c.width, 1).data);
      B.frames++;
      if (previous !== null && s !== previous) B.changed++;
      previous = s;
    }
    if (B.pending && colourAt(B.pending.x, B.pending.y) !== B.pending.colour) {
      B.clicks.push(performance.now() - B.pending.t0);
      B.pending = null;
    }
  }
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
document.getElementById("screen").addEventListener("mousedown", (e) => {
  const c = canvas(), box = c.getBoundingClientRect();
  const x = Math.round(e.clientX - box.left), y = Math.round(e.clientY - box.top);
  B.pending = { x, y, colour: colourAt(x, y), t0: performance.now() };
}, true);
</script></body></html>
""" % {"w": SCREEN[0], "h": SCREEN[1]}


@dataclass
class Desktop:
    """A running desktop session as the bench reaches it."""
    session_id: str
    vnc_socket: str
    user: str
    display: str
    xauthority: str


def find_desktop(session_id: str, agent_dir: Path) -> Desktop:
    """The VNC socket from the agent's services.json; the X display and cookie from the session's xterm."""
    services = json.loads((agent_dir / "sessions" / session_id / "services.json").read_text())
    socket = services["vnc"]["path"]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "xterm":
                continue
            env = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("BERTH_SESSION_ID") == session_id:
            return Desktop(session_id, socket, env["USER"], env["DISPLAY"], env["XAUTHORITY"])
    raise SystemExit(f"desktop session {session_id}: no xterm found to take DISPLAY/XAUTHORITY from")


class XProgram:
    """The Tk program in one mode, run as the session user on the session's display."""

    def __init__(self, desktop: Desktop, mode: str):
        self.dir = Path(tempfile.mkdtemp(prefix="berth-bench-tk-"))
        self.dir.chmod(0o755)
        script = self.dir / "moving.py"
        script.write_text(TK_PROGRAM)
        script.chmod(0o644)
        argv = ["runuser", "-u", desktop.user, "--", "env", f"DISPLAY={desktop.display}",
                f"XAUTHORITY={desktop.xauthority}", "/usr/bin/python3", str(script), mode,
                str(SIZE), str(STRIP_Y), *map(str, CLICK)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the Tk program ({mode}) did not start: {self.proc.stderr.read()[-500:]}")
        time.sleep(0.5)  # mapped and drawn

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        self.proc.wait(10)
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()


class BenchPage:
    """The bench page and noVNC's files over HTTP, and the direct path: a WebSocket bridge to the VNC socket."""

    def __init__(self, port: int, vnc_socket: str):
        self.port, self.vnc_socket = port, vnc_socket
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        return await serve(self._bridge, "127.0.0.1", self.port, process_request=self._http, subprotocols=["binary"],
                           compression=None, max_size=None)

    def _http(self, connection, request):
        path = urlsplit(request.path).path
        if path == "/vnc":
            return None  # the WebSocket: the bridge
        if path == "/":
            body, kind = PAGE.encode(), "text/html; charset=utf-8"
        else:
            file = (NOVNC / path.removeprefix("/novnc/")).resolve()
            if not path.startswith("/novnc/") or NOVNC not in file.parents or not file.is_file():
                return connection.respond(404, "not found\n")
            body = file.read_bytes()
            kind = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return Response(200, "OK", Headers([("Content-Type", kind), ("Content-Length", str(len(body))),
                                            ("Cache-Control", "no-store")]), body)

    async def _bridge(self, ws) -> None:
        reader, writer = await asyncio.open_unix_connection(self.vnc_socket)

        async def up() -> None:
            async for message in ws:
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(256 * 1024):
                await ws.send(data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    def url(self, ws_url: str, quality: int) -> str:
        return f"http://127.0.0.1:{self.port}/?{urlencode({'ws': ws_url, 'quality': quality})}"

    def close(self) -> None:
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _open(browser, url: str, protocols: list[str]):
    page = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
    page.add_init_script(f"window.benchProtocols = {json.dumps(protocols)};")
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
    page.goto(url)
    try:
        page.wait_for_function("window.bench && (bench.connected || bench.error) && "
                               "document.querySelector('#screen canvas') && document.querySelector('#screen canvas').width",
                               timeout=30_000)
    except PlaywrightTimeout:
        raise SystemExit(f"the bench page did not show the desktop within 30 s: {problems or 'no error in the page'}") from None
    if error := page.evaluate("bench.error"):
        raise SystemExit(f"the bench page could not connect: {error}")
    time.sleep(1.0)  # the first full framebuffer update
    return page


def motion(browser, url: str, protocols: list[str], seconds: float) -> dict:
    """fps (animation frames in which the strip changed), and Mbit/s received, over `seconds`."""
    page = _open(browser, url, protocols)
    try:
        page.evaluate(f"bench.start({STRIP_Y + SIZE // 2})")
        time.sleep(seconds)
        r = page.evaluate("bench.stop()")
    finally:
        page.close()
    return {"fps": r["changed"] / r["seconds"], "mbps": r["bytes"] * 8 / r["seconds"] / 1e6, "raf": r["frames"] / r["seconds"]}


def clicks(browser, url: str, protocols: list[str], count: int) -> list[float]:
    """ms from each mousedown on the canvas to the frame that shows the square's new colour."""
    page = _open(browser, url, protocols)
    try:
        x, y = CLICK[0] + CLICK[2] // 2, CLICK[1] + CLICK[2] // 2
        for i in range(count):
            page.mouse.click(x, y)
            deadline = time.monotonic() + 5
            while page.evaluate("bench.clicks.length") <= i:
                if time.monotonic() > deadline:
                    raise SystemExit("a click did not change the square's colour within 5 s")
                time.sleep(0.01)
            time.sleep(0.1)
        return page.evaluate("bench.clicks")
    finally:
        page.close()


def measure(desktop: Desktop, server_url: str, token: str, page_port: int, seconds: float, qualities: list[int],
            click_count: int) -> dict:
    """{(mode, quality, path): figures} for modes solid/noise and {("click", path): [ms]}. Noise is measured at
    `qualities[0]` (noVNC's qualityLevel), then at the next ones only while it misses its targets."""
    from playwright.sync_api import sync_playwright

    gateway_ws = server_url.replace("http://", "ws://", 1) + f"/s/{desktop.session_id}/vnc"
    page_server = BenchPage(page_port, desktop.vnc_socket)
    paths = {"gateway": (gateway_ws, ["binary", f"berth.token.{token}"]),
             "direct": (f"ws://127.0.0.1:{page_port}/vnc", ["binary"])}
    results: dict = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("BERTH_TEST_CHROMIUM", "/usr/bin/chromium"),
                                        args=["--no-sandbox", "--headless", "--disable-gpu"])
            try:
                for mode in ("solid", "noise"):
                    program = XProgram(desktop, mode)
                    try:
                        for quality in qualities if mode == "noise" else qualities[:1]:
                            for path, (ws, protocols) in paths.items():
                                results[(mode, quality, path)] = motion(browser, page_server.url(ws, quality), protocols, seconds)
                            if mode == "solid" or noise_ok(results[(mode, quality, "gateway")]):
                                break  # other qualities only when noise misses its targets at this one
                    finally:
                        program.stop()
                program = XProgram(desktop, "click")
                try:
                    for path, (ws, protocols) in paths.items():
                        results[("click", path)] = clicks(browser, page_server.url(ws, qualities[0]), protocols, click_count)
                finally:
                    program.stop()
            finally:
                browser.close()
    finally:
        page_server.close()
    return results


def noise_ok(figures: dict) -> bool:
    return figures["fps"] >= NOISE_FPS and figures["mbps"] <= NOISE_MBPS


def p50_p95(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[-1]
