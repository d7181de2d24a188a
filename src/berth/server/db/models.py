"""Tables. Everything that matters lives here, so several server replicas can share one database."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, String, Table, Text, TypeDecorator, UniqueConstraint, func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    ssh_keys: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """API, agent and gateway tokens. Only a SHA-256 of the secret is kept (tokens are 256-bit random)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="api")
    label: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class LoginAttempt(Base):
    """Recent logins for throttling, in the database so that every replica counts the same: failures keyed
    `user:NAME` and `addr:ADDRESS` (kept for the window), successes keyed `ok:ADDRESS NAME` (trusted addresses)."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_ts", "key", "ts_ms"), Index("ix_login_attempts_ts", "ts_ms"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    ts_ms: Mapped[int] = mapped_column(BigInteger)


class Queue(Base):
    __tablename__ = "queues"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="online", index=True)
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    gpus: Mapped[list] = mapped_column(JSON, default=list)
    run_as: Mapped[str] = mapped_column(String(64), default="")
    is_root: Mapped[bool] = mapped_column(Boolean, default=False)
    backends: Mapped[list] = mapped_column(JSON, default=lambda: ["process"])  # session backends it offers (claiming)
    token_hash: Mapped[str] = mapped_column(String(64), index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Which server process holds this worker's tunnel (ServerSettings.replica_name), so any replica can find it.
    tunnel_replica: Mapped[str | None] = mapped_column(String(128), nullable=True)
    tunnel_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    tunnel_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # that replica's BERTH_REPLICA_URL


class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id"), index=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    config: Mapped[dict] = mapped_column(JSON)
    secrets: Mapped[dict] = mapped_column(JSON, default=dict)  # for the supervisor only, never returned
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id"), nullable=True, index=True)
    restored_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The backend a worker must offer to take it ("container" when the config names an image); null: any.
    required_backend: Mapped[str | None] = mapped_column(String(32), nullable=True)
    session_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    endpoints: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the app's Endpoints; secrets in them sealed
    idle_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    kept_alive_by: Mapped[list | None] = mapped_column(JSON, nullable=True)  # idle rules that fired last (supervisor)
    idle_extended_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # `sessions extend`
    sync_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # `sessions sync`
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# The web instance list: one app's sessions newest first (ties by id, in the same direction so the index serves
# the whole ORDER BY and a page reads only its rows), or by name.
Index("ix_sessions_app_started", Session.app, func.coalesce(Session.started_at, Session.created_at), Session.id)
Index("ix_sessions_app_name", Session.app, Session.name)


class SessionEvent(Base):
    """One console line. Ids grow, so `logs --follow` asks for everything after the last id it saw."""

    __tablename__ = "session_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)


# --- resource metrics (issue #4) -----------------------------------------------------------------

class _SampleColumns:
    """One wide row per sample (cheaper than a row per series). Time is epoch milliseconds: downsampling
    buckets are then exact integer arithmetic on SQLite and PostgreSQL alike."""

    ts_ms: Mapped[int] = mapped_column(BigInteger)
    cpu: Mapped[float | None] = mapped_column(Float, nullable=True)  # % of one core, summed
    mem_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_read_mbs: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_write_mbs: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_rx_mbs: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_tx_mbs: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_util: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_mem_used_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_mem_total_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpus: Mapped[list | None] = mapped_column(JSON, nullable=True)  # per-GPU detail; null: no NVML
    processes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    network_scope: Mapped[str | None] = mapped_column(String(8), nullable=True)  # "session" | "host"; null: before 0005


_SAMPLE_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class SessionSample(_SampleColumns, Base):
    __tablename__ = "session_samples"
    __table_args__ = (Index("ix_session_samples_session_ts", "session_id", "ts_ms"), Index("ix_session_samples_ts", "ts_ms"))
    id: Mapped[int] = mapped_column(_SAMPLE_ID, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))


class WorkerSample(_SampleColumns, Base):
    __tablename__ = "worker_samples"
    __table_args__ = (Index("ix_worker_samples_worker_ts", "worker_id", "ts_ms"), Index("ix_worker_samples_ts", "ts_ms"))
    id: Mapped[int] = mapped_column(_SAMPLE_ID, primary_key=True, autoincrement=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"))


SAMPLE_SERIES = ("cpu", "mem_mb", "disk_read_mbs", "disk_write_mbs", "net_rx_mbs", "net_tx_mbs", "gpu_util",
                 "gpu_mem_used_mb", "gpu_mem_total_mb")  # = berth.metrics.SERIES


def _rollup_table(name: str, owner: str, target: str) -> Table:
    """Per-minute aggregates, kept up to date at ingestion: long ranges are charted from these (a day is
    1,440 rows instead of 43,200 samples). Sum and count per series give exact means when merged."""
    columns = [Column(owner, ForeignKey(target, ondelete="CASCADE"), primary_key=True),
               Column("minute_ms", BigInteger, primary_key=True), Column("n", Integer, nullable=False)]
    for series in SAMPLE_SERIES:
        columns += [Column(f"{series}_min", Float), Column(f"{series}_max", Float),
                    Column(f"{series}_sum", Float, nullable=False), Column(f"{series}_n", Integer, nullable=False)]
    return Table(name, Base.metadata, *columns, Index(f"ix_{name}_minute", "minute_ms"))


session_rollups = _rollup_table("session_rollups", "session_id", "sessions.id")
worker_rollups = _rollup_table("worker_rollups", "worker_id", "workers.id")


# --- persistent workspaces (issue #3) ------------------------------------------------------------

class WorkspacePack(Base):
    """A pack file in the store. Chunks are namespaced by project: identical content is stored once per project."""

    __tablename__ = "workspace_packs"
    # Per uploading session: a pack's name is not checked against its bytes, so another session's pack
    # of the same name must not stand in for ours.
    __table_args__ = (UniqueConstraint("project_id", "session_id", "digest"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(512))  # store key (unique per upload: a re-upload never reuses a key GC may delete)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)  # GC grace starts here


class WorkspaceChunk(Base):
    __tablename__ = "workspace_chunks"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    chunk_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[int] = mapped_column(ForeignKey("workspace_packs.id", ondelete="CASCADE"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    raw_length: Mapped[int] = mapped_column(Integer)
    codec: Mapped[int] = mapped_column(Integer)
    # Uploads are not hashed by the server; a chunk another session uploaded is verified before it is trusted.
    session_id: Mapped[str] = mapped_column(String(32))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)


class Snapshot(Base):
    """A complete snapshot: the row is written last, after its manifest and every chunk are stored."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_session_created", "session_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    files: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_stored_new: Mapped[int] = mapped_column(BigInteger, default=0)
    manifest_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="complete")


class SnapshotPack(Base):
    """Which packs a snapshot needs. No cascade from packs: the database refuses to delete a referenced pack."""

    __tablename__ = "snapshot_packs"
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True)
    pack_id: Mapped[int] = mapped_column(ForeignKey("workspace_packs.id"), primary_key=True, index=True)
