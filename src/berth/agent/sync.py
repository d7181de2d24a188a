"""The supervisor's side of persistent workspaces: restore at start, periodic and on-demand sync, final sync.

Syncs never overlap (one lock); a failed sync leaves the previous snapshot in place and says why in the console.
The files are read and written by a helper acting as the session user (:class:`SessionEngine`); the network
calls, with the session's token, stay in the supervisor. Inside the session, `berth-sync` asks for a sync
through a unix socket in a directory the session user can use but not change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from berth.agent.backends.base import make_socket_dir
from berth.client import BerthClient
from berth.errors import BerthError, WorkspaceError
from berth.workspace.format import FormatError, Pack, pack_digest, pack_header_length, parse_pack
from berth.workspace.restore import ReadRanges, RestoreResult
from berth.workspace.snapshot import PackSink, ParentCache, SnapshotResult
from berth.workspace.sync import human

log = logging.getLogger("berth.supervisor")

Act = Callable[..., Awaitable[Any]]  # SessionBackend.act_as_session, hooks bound

BERTH_SYNC_SCRIPT = """#!/bin/sh
# Ask this session's supervisor to store the workspace now (berth).
exec /usr/bin/python3 - "$@" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(SOCKET_PATH)
except OSError as exc:
    sys.exit(f"berth-sync: cannot reach the session supervisor ({exc})")
s.sendall(b"sync\\n")
reply = b""
while not reply.endswith(b"\\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
text = reply.decode().strip()
print(text)
sys.exit(0 if text.startswith("ok") else 1)
PY
"""


class SessionEngine:
    """The snapshot engine run by a helper acting as the session user (see ``berth.workspace.sync.Engine``).

    What the helper sends is checked like any untrusted input: a pack is rebuilt from its own bytes (the
    server verifies it again), and reads name a pack and ranges only, of the snapshot this supervisor chose."""

    def __init__(self, act: Act):
        self.act = act

    async def snapshot(self, root: Path, sink: PackSink, *, parent: ParentCache | None, excludes: list[str] | None,
                       max_bytes: int | None, emit: Callable[[str], None]) -> SnapshotResult:
        async def put_pack(data: bytes) -> None:
            if not isinstance(data, bytes):
                raise BerthError("put_pack: expected the pack's bytes")
            try:
                chunks = parse_pack(data, len(data))
            except FormatError as exc:
                raise BerthError(f"put_pack: not a pack ({exc})") from None
            view = memoryview(data)
            parts = [view[:pack_header_length(data)], *(view[c.offset:c.offset + c.length] for c in chunks)]
            await asyncio.to_thread(sink.put_pack, Pack(pack_digest(data), parts, len(data), chunks))

        args = {"root": str(root), "excludes": excludes, "max_bytes": max_bytes, "parent": None if parent is None else {
            "snapshot_id": parent.snapshot_id, "session_id": parent.session_id, "project": parent.project,
            "manifest": parent.manifest_bytes, "inodes": parent.inodes.tobytes()}}
        out = await self.act("snapshot", args, handlers={"put_pack": put_pack}, emit=emit, error=WorkspaceError)
        await asyncio.to_thread(sink.flush)
        try:
            inodes = array("q")
            inodes.frombytes(out["inodes"])
            cache = await asyncio.to_thread(ParentCache, "", "", "", out["manifest"], inodes)
            counts = {k: int(out[k]) for k in ("files", "bytes_total", "files_read", "bytes_read", "chunks_new", "bytes_new")}
            skipped = [str(p) for p in out["skipped"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkspaceError(f"workspace snapshot: the helper's answer does not parse ({exc})") from None
        return SnapshotResult(out["manifest"], cache, skipped=skipped, **counts)

    async def restore(self, manifest: bytes, locations: bytes, read: ReadRanges, dest: Path, *,
                      progress: Callable[[int, int], None] | None, want_inodes: bool) -> RestoreResult:
        async def read_ranges(pack: str, ranges: list) -> bytes:
            try:
                wanted = [(int(offset), int(length)) for offset, length in ranges]
            except (TypeError, ValueError):
                raise BerthError("read: ranges must be [offset, length] pairs") from None
            if not isinstance(pack, str):
                raise BerthError("read: pack must be a name")
            return await asyncio.to_thread(read, pack, wanted)

        out = await self.act("restore", {"manifest": manifest, "locations": locations, "dest": str(dest),
                                         "want_inodes": want_inodes},
                             handlers={"read": read_ranges}, progress=progress, error=WorkspaceError)
        try:
            return RestoreResult(files=int(out["files"]), bytes_total=int(out["bytes_total"]),
                                 dropped_bits=[str(p) for p in out["dropped_bits"]],
                                 inodes={str(p): (int(i), int(c)) for p, i, c in out["inodes"]})
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkspaceError(f"workspace restore: the helper's answer does not parse ({exc})") from None


class WorkspaceSync:
    def __init__(self, client: BerthClient, session_id: str, workspace: Path, state_dir: Path, *, interval_s: float,
                 excludes: list[str] | None, max_bytes: int | None, emit: Callable[[str], None], act: Act):
        self.client = client
        self.act = act
        self.engine = SessionEngine(act)
        self.session_id = session_id
        self.workspace = workspace
        self.state_dir = state_dir
        self.interval_s = interval_s
        self.excludes = excludes
        self.max_bytes = max_bytes
        self.emit = emit
        self.lock = asyncio.Lock()
        self.last_sync = time.monotonic()
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _emit(self, message: str) -> None:
        self.emit(message if message.startswith("workspace:") else f"workspace: {message}")

    async def restore(self, source_session_id: str) -> None:
        from berth.workspace.sync import restore_from_server

        info = await restore_from_server(self.client, source_session_id, self.workspace, emit=self._emit,
                                         state_dir=self.state_dir, engine=self.engine)
        if info is None:
            self.emit(f"workspace: session {source_session_id} has no stored workspace; starting with an empty one")
        # else: the restore itself said what it restored

    async def sync(self, reason: str) -> bool:
        """Store the workspace now; False (and a console line) when it failed."""
        from berth.workspace.sync import snapshot_to_server

        async with self.lock:
            t0 = time.monotonic()
            try:
                info = await snapshot_to_server(self.client, self.session_id, self.workspace, state_dir=self.state_dir,
                                                excludes=self.excludes, max_bytes=self.max_bytes,
                                                emit=self._emit, engine=self.engine)
            except BerthError as exc:
                self.emit(f"workspace: {reason} sync failed, the previous snapshot is kept: {exc.message}")
                self.last_error = exc.message
                return False
            except Exception as exc:  # a bug must fail the sync loudly, not hang the supervisor
                log.exception("workspace sync crashed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.emit(f"workspace: {reason} sync crashed, the previous snapshot is kept: {self.last_error}")
                return False
            self.last_sync = time.monotonic()
            self.emit(f"workspace: {reason} sync stored snapshot {info.id} ({info.files} files, {human(info.bytes_total)}, "
                      f"{human(info.bytes_new)} new) in {time.monotonic() - t0:.2f} s")
            return True

    last_error: str | None = None

    async def periodic(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.interval_s - (time.monotonic() - self.last_sync)))
            if time.monotonic() - self.last_sync >= self.interval_s - 0.5:
                await self.sync("periodic")

    async def serve_socket(self, socket_dir: Path, bin_dir: Path, gid: int | None) -> asyncio.AbstractServer:
        """`berth-sync` inside the session connects here; only the session user (and root) can.

        `socket_dir` is the supervisor's (root's, 0710 with the session's group when `gid` is given): the
        session user may connect but cannot swap the socket for a link. The script goes into `bin_dir`
        (the session's venv) written as the session user."""
        make_socket_dir(socket_dir, gid)  # shared with the app's own sockets (a desktop's VNC)
        path = socket_dir / "sync.sock"
        path.unlink(missing_ok=True)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                if line.strip() == b"sync":
                    ok = await self.sync("on-demand")
                    writer.write(b"ok: workspace stored\n" if ok else f"failed: {self.last_error}\n".encode())
                else:
                    writer.write(b"unknown request\n")
                await writer.drain()
            except (asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_unix_server(handle, path=str(path))
        os.chmod(path, 0o660 if gid is not None else 0o600)
        if gid is not None:
            os.chown(path, 0, gid)
        script = BERTH_SYNC_SCRIPT.replace("SOCKET_PATH", repr(str(path)))
        await self.act("write_files", {"files": [{"path": str(bin_dir / "berth-sync"), "content": script.encode(),
                                                  "mode": 0o755}]})
        return server
