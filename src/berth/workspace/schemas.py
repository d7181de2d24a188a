"""Wire types of the workspace API (``/api/v1/workspaces``), shared by the server, agents and the CLI."""

from __future__ import annotations

from datetime import datetime

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from berth.fields import BigCount, Line


class SnapshotView(BaseModel):
    """One complete snapshot (incomplete ones are never listed)."""

    id: str
    session_id: str
    project: str
    parent_id: str | None = Field(description="The snapshot this one was taken incrementally against")
    created_at: datetime
    files: int
    bytes_total: int = Field(description="Size of the workspace's files")
    bytes_new: int = Field(description="Stored (compressed) bytes this snapshot added to the store")
    status: str


class WorkspaceState(BaseModel):
    """What a supervisor needs before a sync: its project (the chunk namespace) and its latest snapshot."""

    session_id: str
    project: str
    restored_from: str | None
    latest: SnapshotView | None


class ChunkQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[Line, Field(max_length=64)]] = Field(max_length=20000, description="Chunk ids (SHA-256 hex)")


class MissingChunks(BaseModel):
    missing: list[str] = Field(description="The asked ids the store does not have: send these")


class PackStored(BaseModel):
    digest: str
    chunks: int = Field(description="Chunks in the pack")
    created: bool = Field(description="False when the store already had this pack (idempotent retry)")


class ReadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pack: str = Field(pattern=r"^[0-9]{1,18}$", description="Pack id, as in the snapshot's location table")
    ranges: list[tuple[BigCount, BigCount]] = Field(min_length=1, max_length=100000, description="(offset, length) pairs")


class GcReport(BaseModel):
    packs_deleted: int
    bytes_freed: int
    orphans_deleted: int = Field(description="Store objects with no database row (left by crashes)")
