"""Typed value objects shared by server, agent and CLI (the wire format of the REST API)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from berth.fields import BigCount, Count, Finite, JsonObject, Line, Name, OutputText, Text, WireModel


class SessionStatus(str, enum.Enum):
    queued = "queued"
    starting = "starting"
    active = "active"
    idle = "idle"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"

    @property
    def is_final(self) -> bool:
        return self in (SessionStatus.stopped, SessionStatus.failed)

    @property
    def is_running(self) -> bool:
        """The supervisor is (or should be) up."""
        return self in (SessionStatus.starting, SessionStatus.active, SessionStatus.idle, SessionStatus.stopping)

    @property
    def dashboard(self) -> str:
        """The seed's four icons: setting up, active, idle, stopped (failed shown distinctly)."""
        return {
            "queued": "setting up", "starting": "setting up", "active": "active", "idle": "idle",
            "stopping": "stopped", "stopped": "stopped", "failed": "failed",
        }[self.value]


class WorkerStatus(str, enum.Enum):
    online = "online"
    lost = "lost"
    stopped = "stopped"


class Role(str, enum.Enum):
    viewer = "viewer"
    member = "member"
    admin = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 1, "member": 2, "admin": 3}[self.value]


class App(str, enum.Enum):
    ssh_session = "ssh-session"
    remote_desktop = "remote-desktop"


class SshInfo(WireModel):
    host: Line = Field(max_length=255)
    port: int = Field(ge=0, le=65535)
    user: Line = Field(max_length=64)
    password: Text = Field(max_length=1024)
    command: Text = Field(max_length=4096)
    server: Line = Field(max_length=32, description="openssh, dropbear or builtin")
    host_key: Text | None = Field(None, max_length=16384, description="Host public key line (for known_hosts pinning)")
    host_key_fingerprint: Line | None = Field(None, max_length=256)


class Links(WireModel):
    """Addresses a browser opens (remote desktop): through the gateway, and straight to the worker."""

    browser: Text | None = Field(None, max_length=4096)
    direct: Text | None = Field(None, max_length=4096)


class Endpoints(WireModel):
    """How users reach a running session. Each app fills the kinds it serves (SSH Session: `ssh`)."""

    ssh: SshInfo | None = None
    links: Links | None = None


class LastSnapshot(BaseModel):
    """The session's newest stored workspace snapshot."""

    id: str
    created_at: datetime
    files: int
    bytes_total: int
    bytes_new: int


class SessionView(BaseModel):
    """What `berth sessions show --json` prints and the dashboard shows."""

    id: str
    app: App
    name: str
    project: str
    tags: list[str]
    queue: str
    status: SessionStatus
    dashboard_status: str
    idle_seconds: float
    restored_from: str | None
    worker: str | None
    error: str | None
    owner: str
    config: dict[str, Any]
    ssh: SshInfo | None
    links: Links | None
    created_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    last_snapshot: LastSnapshot | None = None
    kept_alive_by: list[str] | None = Field(None, description="What kept the session from being idle at the last report, e.g. 'cpu 54% > 10%'")
    idle_extended_until: datetime | None = Field(None, description="No idle shutdown before this time (`berth sessions extend`)")


class LaunchSecrets(WireModel):
    """Credentials a session needs at setup. Stored for the supervisor only; never shown, exported or logged."""

    model_config = ConfigDict(extra="forbid")
    git_token: Text | None = Field(None, max_length=4096, description="Token for cloning a private HTTPS repository")
    git_ssh_key: Text | None = Field(None, max_length=64 * 1024, description="Private key (OpenSSH PEM) for cloning over SSH")


class LaunchRequest(WireModel):
    model_config = ConfigDict(extra="forbid")
    app: App
    config: dict[str, Any] = Field(description="The app's configuration (validated against its model)")
    secrets: LaunchSecrets = Field(default_factory=LaunchSecrets)


class ConsoleEvent(BaseModel):
    id: int
    ts: datetime
    level: str
    message: str


class EventIn(WireModel):
    ts: datetime | None = None
    level: Line = Field("info", max_length=16)
    message: OutputText


class TokenView(BaseModel):
    id: str
    label: str
    kind: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


class TokenCreated(TokenView):
    token: str = Field(description="The secret, shown once")


class LoginRequest(WireModel):
    username: Line = Field(max_length=128)
    password: Text = Field(max_length=1024)


class LoginResponse(BaseModel):
    token: str
    username: str
    is_admin: bool


class UserView(BaseModel):
    username: str
    is_admin: bool


# A session backend's name as agents report it (the server does not know the agent's list: it only matches names).
BackendName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class WorkerRegister(WireModel):
    name: Line = Field(min_length=1, max_length=128)
    hostname: Line = Field(max_length=255)
    queues: list[Name] = Field(max_length=256)
    cpus: Count
    memory_bytes: BigCount
    gpus: list[JsonObject] = Field([], max_length=256)
    run_as: Line = Field(max_length=64)
    is_root: bool
    backends: list[BackendName] = Field(["process"], min_length=1, max_length=16,
                                        description="Session backends this agent runs (an agent of an older berth: process)")
    worker_id: Line | None = Field(None, max_length=32, description="Previous identity, to re-register after a restart")


class WorkerRegistered(BaseModel):
    worker_id: str
    token: str


class WorkerView(BaseModel):
    id: str
    name: str
    hostname: str
    queues: list[str]
    status: WorkerStatus
    cpus: int
    memory_bytes: int
    gpus: list[dict[str, Any]]
    run_as: str
    backends: list[str] = Field(["process"], description="Session backends the worker offers (one naming an image needs container)")
    last_heartbeat: datetime | None
    tunnel_replica: str | None = Field(None, description="The server replica holding the agent's tunnel; null when the tunnel is down")
    tunnel_since: datetime | None = None


class Assignment(BaseModel):
    """A claimed session, as handed to the agent (and from it to the supervisor)."""

    session_id: str
    session_token: str
    app: App
    config: dict[str, Any]
    secrets: LaunchSecrets
    owner: str
    owner_ssh_keys: list[str]
    restored_from: str | None


class SupervisorStatus(WireModel):
    status: SessionStatus
    error: OutputText | None = None
    endpoints: Endpoints | None = Field(None, description="How users reach the session, once its app serves")
    idle_seconds: Finite | None = Field(None, ge=0)
    kept_alive_by: list[OutputText] | None = Field(None, max_length=100)


class SupervisorControl(BaseModel):
    """The server's answer to a supervisor's heartbeat: what the session should do."""

    stop: bool
    status: SessionStatus
    extend_until: datetime | None = Field(None, description="No idle shutdown before this time (`berth sessions extend`)")
    sync_requested_at: datetime | None = Field(None, description="Latest on-demand workspace sync request (`berth sessions sync`)")
