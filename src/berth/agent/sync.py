"""The supervisor's side of persistent workspaces: restore at start, periodic and on-demand sync, final sync.

Syncs never overlap (one lock); a failed sync leaves the previous snapshot in place and says why in the console.
Inside the session, `berth-sync` asks for a sync through a unix socket in the session's home.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import logging

from berth.client import BerthClient
from berth.errors import BerthError
from berth.workspace.sync import human

log = logging.getLogger("berth.supervisor")

BERTH_SYNC_SCRIPT = """#!/bin/sh
# Ask this session's supervisor to store the workspace now (berth).
exec /usr/bin/python3 - "$@" <<'PY'
import os, socket, sys
path = os.path.join(os.environ.get("HOME", "~"), ".berth", "sync.sock")
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
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


class WorkspaceSync:
    def __init__(self, client: BerthClient, session_id: str, workspace: Path, state_dir: Path, *, interval_s: float,
                 excludes: list[str] | None, max_bytes: int | None, emit: Callable[[str], None]):
        self.client = client
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

    async def restore(self, source_session_id: str, uid: int | None, gid: int | None) -> None:
        from berth.workspace.sync import restore_from_server

        info = await restore_from_server(self.client, source_session_id, self.workspace, uid=uid, gid=gid,
                                         emit=self._emit, state_dir=self.state_dir)
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
                                                emit=self._emit)
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

    async def serve_socket(self, home: Path, bin_dir: Path, uid: int | None, gid: int | None) -> asyncio.AbstractServer:
        """`berth-sync` inside the session connects here; only the session user (and root) can."""
        berth_dir = home / ".berth"
        berth_dir.mkdir(exist_ok=True)
        path = berth_dir / "sync.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

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
        os.chmod(path, 0o600)
        if uid is not None:
            os.chown(path, uid, gid if gid is not None else -1)
        script = bin_dir / "berth-sync"  # the session's venv: first on its PATH
        script.write_text(BERTH_SYNC_SCRIPT)
        script.chmod(0o755)
        return server
