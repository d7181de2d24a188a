"""Typed calls of the workspace API over a :class:`~berth.client.BerthClient` (errors map as everywhere)."""

from __future__ import annotations

import json

from berth.client import BerthClient

from .format import Pack
from .schemas import GcReport, PackStored, SnapshotView, WorkspaceState
from .transfer import BulkHttp

_PREFIX = "/api/v1/workspaces"
_BINARY = {"Content-Type": "application/octet-stream"}
_TRANSFER_TIMEOUT = 300.0  # a 16 MiB pack over a slow link
_SEND_BLOCK = 1 << 20


def _coalesce(parts: list):
    """Large blobs go out as they are (no copy); small ones joined first (one send per MiB, not per file)."""
    small: list = []
    size = 0
    for part in parts:
        if len(part) >= _SEND_BLOCK:
            if small:
                yield b"".join(small)
                small, size = [], 0
            yield part
            continue
        small.append(part)
        size += len(part)
        if size >= _SEND_BLOCK:
            yield b"".join(small)
            small, size = [], 0
    if small:
        yield b"".join(small)


class WorkspaceApi:
    def __init__(self, client: BerthClient):
        self.client = client
        self.bulk = BulkHttp(client.server, client.token, _TRANSFER_TIMEOUT)

    def close(self) -> None:
        self.bulk.close()

    async def _json(self, method: str, path: str, **kwargs):
        return (await self.client.request(method, _PREFIX + path, **kwargs)).json()

    # --- supervisor --------------------------------------------------------------------------------
    async def state(self, session_id: str) -> WorkspaceState:
        return WorkspaceState.model_validate(await self._json("GET", f"/sessions/{session_id}/state"))

    # --- bulk calls: blocking, for worker threads (see transfer.py) -------------------------------
    def missing(self, session_id: str, ids: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(ids), 20000):
            out += self.bulk.json("POST", f"{_PREFIX}/sessions/{session_id}/missing", {"ids": ids[i:i + 20000]})["missing"]
        return out

    def put_pack(self, session_id: str, pack: Pack) -> PackStored:
        data = self.bulk.request("PUT", f"{_PREFIX}/sessions/{session_id}/packs/{pack.digest}", lambda: _coalesce(pack.parts),
                                 length=pack.size)
        return PackStored.model_validate_json(data)

    def read(self, snapshot_id: str, pack: str, ranges: list[tuple[int, int]]) -> bytes:
        body = json.dumps({"pack": pack, "ranges": ranges}).encode()
        return self.bulk.request("POST", f"{_PREFIX}/snapshots/{snapshot_id}/read", [body], "application/json")

    async def commit(self, session_id: str, snapshot_id: str, manifest: bytes, parent: str | None) -> SnapshotView:
        params = {"parent": parent} if parent else {}
        data = await self._json("PUT", f"/sessions/{session_id}/snapshots/{snapshot_id}", content=manifest, headers=_BINARY,
                                params=params, timeout=_TRANSFER_TIMEOUT)
        return SnapshotView.model_validate(data)

    # --- listing and download ----------------------------------------------------------------------
    async def snapshots(self, session: str | None = None, project: str | None = None, limit: int = 100) -> list[SnapshotView]:
        params = {k: v for k, v in {"session": session, "project": project, "limit": limit}.items() if v}
        return [SnapshotView.model_validate(s) for s in await self._json("GET", "/snapshots", params=params)]

    async def snapshot(self, snapshot_id: str) -> SnapshotView:
        return SnapshotView.model_validate(await self._json("GET", f"/snapshots/{snapshot_id}"))

    async def manifest(self, snapshot_id: str) -> bytes:
        return (await self.client.request("GET", f"{_PREFIX}/snapshots/{snapshot_id}/manifest", timeout=_TRANSFER_TIMEOUT)).content

    async def locations(self, snapshot_id: str) -> bytes:
        return (await self.client.request("GET", f"{_PREFIX}/snapshots/{snapshot_id}/locations", timeout=_TRANSFER_TIMEOUT)).content

    async def gc(self, grace_s: float | None = None) -> GcReport:
        params = {"grace_s": grace_s} if grace_s is not None else {}
        return GcReport.model_validate(await self._json("POST", "/gc", params=params))
