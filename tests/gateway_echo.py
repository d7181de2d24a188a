"""A session's own web app for the gateway tests: a small HTTP/1.1 + WebSocket server (standard library only,
so the session's /usr/bin/python3 runs it), started by the session's init script on $BERTH_APP_PORT as the
session user.

Every request it gets is appended to the log at GET /__log (method, target, headers), so tests can say what
reached the app and what did not. Paths: /echo (the body's size and SHA-256, read as it streams), /redirect?to=URL
(302 there), /cookies (Set-Cookie variants), /big?n=N (N bytes, chunked), /ws (a WebSocket echo, subprotocol
"echo.v1" when offered); anything else answers its own request as JSON.
"""

from __future__ import annotations

import time

APP = r'''
import asyncio, base64, hashlib, json, os, sys
from urllib.parse import parse_qs, urlsplit

LOG = []
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_body(reader, headers):
    digest, size = hashlib.sha256(), 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            n = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if n == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            chunk = await reader.readexactly(n)
            await reader.readexactly(2)
            digest.update(chunk); size += n
    else:
        left = int(headers.get("content-length", "0") or 0)
        while left:
            chunk = await reader.read(min(left, 65536))
            if not chunk:
                break
            digest.update(chunk); size += len(chunk); left -= len(chunk)
    return size, digest.hexdigest()


def answer(writer, status, body=b"", headers=()):
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


async def websocket(reader, writer, headers):
    key = headers["sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    extra = "Sec-WebSocket-Protocol: echo.v1\r\n" if "echo.v1" in offered else ""
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n").encode())
    writer.write(frame(1, b"hello " + ",".join(offered).encode()))
    while True:
        b1, b2 = await reader.readexactly(2)
        opcode, n = b1 & 15, b2 & 127
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b2 & 128 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
        if opcode == 8:
            writer.write(frame(8, data[:2] or b"\x03\xe8"))
            await writer.drain()
            return
        if opcode == 9:
            writer.write(frame(10, data))
        elif opcode in (1, 2):
            if data == b"close-me":
                writer.write(frame(8, (4321).to_bytes(2, "big") + b"app says bye"))
                await writer.drain()
                return
            writer.write(frame(opcode, data))
        await writer.drain()


def frame(opcode, data):
    n = len(data)
    size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536 else bytes([127]) + n.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + size + data


async def handle(reader, writer):
    try:
        request = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        method, target, _ = request.split(" ", 2)
        pairs = []
        while (line := (await reader.readline()).decode("latin-1").rstrip("\r\n")):
            name, _, value = line.partition(":")
            pairs.append([name.strip(), value.strip()])
        headers = {n.lower(): v for n, v in pairs}
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        if path != "/__log":
            LOG.append({"method": method, "target": target, "headers": pairs})
        if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
            return await websocket(reader, writer, headers)
        size, digest = await read_body(reader, headers)
        if path == "/__log":
            answer(writer, "200 OK", json.dumps(LOG).encode(), ["Content-Type: application/json"])
        elif path == "/redirect":
            answer(writer, "302 Found", b"", [f"Location: {query['to'][0]}"])
        elif path == "/cookies":
            answer(writer, "200 OK", b"ok", ["Set-Cookie: plain=1", "Set-Cookie: rooted=2; Path=/; HttpOnly",
                                             "Set-Cookie: domained=3; Domain=example.com; Path=/x",
                                             "Set-Cookie: berth_gw=forged; Path=/"])
        elif path == "/big":
            n = int(query["n"][0])
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            block = b"x" * 65536
            while n:
                part = block[:min(n, len(block))]
                writer.write(b"%x\r\n%s\r\n" % (len(part), part)); n -= len(part)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            body = {"method": method, "target": target, "headers": pairs, "bytes": size, "sha256": digest}
            answer(writer, "200 OK", json.dumps(body).encode(), ["Content-Type: application/json"])
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    port = int(os.environ["BERTH_APP_PORT"])
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"echo app listening on {port}", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''

INIT_SCRIPT = f"""cat > "$HOME/echo_app.py" <<'BERTH_ECHO_APP'
{APP}
BERTH_ECHO_APP
nohup /usr/bin/python3 "$HOME/echo_app.py" 2>&1 < /dev/null &  # its lines go on to the console
echo "app port $BERTH_APP_PORT"
"""


def launch_echo_session(stack, name: str, project: str | None = None, init_before: str = "") -> dict:
    """A running ssh-session whose web app is the echo app; returns its view once the app answers.
    `init_before`: lines its init script runs first."""
    import httpx

    config = {"name": name, "init_script": init_before + INIT_SCRIPT, **({"project": project} if project else {})}
    view = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": config})
    view = stack.wait_status(view["id"], "active", timeout=120)
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{stack.url}/s/{view['id']}/app/__log", headers={"Authorization": f"Bearer {stack.token}"})
        if r.status_code == 200:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"the echo app never answered: {r.status_code} {r.text}; {stack.events(view['id'])}")
        time.sleep(0.2)


def app_log(stack, session_id: str) -> list[dict]:
    """Every request the session's app got (the log's own reads excluded)."""
    import httpx

    r = httpx.get(f"{stack.url}/s/{session_id}/app/__log", headers={"Authorization": f"Bearer {stack.token}"})
    r.raise_for_status()
    return r.json()


def header_names(entry: dict) -> set[str]:
    return {name.lower() for name, _ in entry["headers"]}
