"""The app plugin, agent side: what one app does on the worker for one session.

The supervisor runs the same lifecycle for every app (backend → restore → app → watch → final sync → app
stop → backend teardown); everything app-specific sits behind this class. An app is made with the session's
:class:`SessionRuntime` after the backend has prepared the session's identity and home.

Required methods:
    ``prepare()``  make the app's environment in the session (tools, packages, user steps), as the session user:
                   commands through ``runtime.backend.run_in_session``, files through ``runtime.act``
    ``start()``    start the app's servers and return its :class:`~berth.schemas.Endpoints` (how users reach it)
    ``stop()``     stop the app's servers; the backend ends whatever else the session started

Optional methods (the defaults suit an app without them):
    ``workspace()``        the persistent workspace to restore and sync (default: none)
    ``down_reason()``      None while the app serves, else why it stopped serving (checked while the session runs)
    ``activity_ports()``   ports where bytes from a connected user count as typing, for idle detection
    ``notify_users(text)`` write a line to every connected user (idle warnings); returns how many were reached
    ``services()``         what the gateway may reach through the agent tunnel, by name (``ssh``, ``vnc``, ``http``):
                           loopback ports or unix sockets inside the worker; clients only ever name them

``prepare()`` may start servers early when nothing it still has to do can change them (``start()`` then only
waits for them): the SSH app does so when there is no init script, which saves a second of launch time.
Errors for the user are raised as :class:`~berth.errors.SetupFailed` with a message that names the step.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from berth.agent.backends import SessionBackend, SessionHost
from berth.agent.context import SupervisorContext
from berth.agent.session_services import Service
from berth.apps import CommonConfig, config_model
from berth.errors import SetupFailed
from berth.schemas import App, Assignment, Endpoints


APP_PORT_VAR = "BERTH_APP_PORT"


def pick_app_port() -> int:
    """A free loopback port for the session's web app, chosen once at setup (``$BERTH_APP_PORT`` in the session).
    Nothing reserves it until the user's server binds it: on a worker shared by several users, whoever listens
    there is what the gateway reaches."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def workspace_in_home(path: str, home: Path) -> Path:
    """A configured workspace inside the session's home: `~`, `~/x` or a relative `x`; anything else is refused
    here too (configurations stored before launch validation refused them)."""
    rel = "" if path == "~" else path[2:] if path.startswith("~/") else path
    if rel.startswith("/") or ".." in Path(rel).parts or "\0" in rel:
        raise SetupFailed(f"workspace {path!r} is not inside the session's home (use a relative path or ~/...)")
    return home / rel if rel else home


@dataclass(frozen=True)
class WorkspaceSpec:
    """The directory kept across sessions, and how it is stored."""

    path: Path
    excludes: list[str]
    max_bytes: int
    sync_interval_s: float
    helper_dir: Path | None = None  # where the `berth-sync` command is put for the user (on their PATH)


@dataclass
class SessionRuntime:
    """What the supervisor gives an app: the session, the prepared backend, and ways to act and speak."""

    assignment: Assignment
    context: SupervisorContext
    backend: SessionBackend
    host: SessionHost
    session_dir: Path        # the supervisor's private directory for this session (root's when the agent is root)
    password: str            # the session's login password
    advertise_host: str      # the address users reach this worker at
    emit: Callable[[str], None]                  # a console line
    act: Callable[..., Awaitable[Any]]           # backend.act_as_session with the sampler's bookkeeping
    note_input: Callable[[], None]               # a user typed (for servers that see keystrokes themselves)
    app_port: int | None = None  # the loopback port the session's own web app may serve on (``pick_app_port``)

    @property
    def session_id(self) -> str:
        return self.assignment.session_id

    @property
    def app_env(self) -> dict[str, str]:
        """What every app exports to the session's processes and logins about its web app's port."""
        return {APP_PORT_VAR: str(self.app_port)} if self.app_port else {}

    def app_service(self) -> dict[str, Service]:
        """The session's own web app as the gateway reaches it (``/s/<id>/app/``): whatever listens on the port."""
        if not self.app_port:
            return {}
        return {"http": Service(protocol="http", port=self.app_port, uid=self.host.run_as.uid)}

    @property
    def scratch(self) -> Path:
        """A private directory for a step's temporary files (secrets included); removed at teardown."""
        path = self.session_dir / "scratch"
        path.mkdir(mode=0o700, exist_ok=True)
        return path


class AgentApp(abc.ABC):
    app: ClassVar[App]

    def __init__(self, runtime: SessionRuntime):
        self.runtime = runtime
        self.config: CommonConfig = config_model(self.app).model_validate(runtime.assignment.config)

    @abc.abstractmethod
    async def prepare(self) -> None: ...

    @abc.abstractmethod
    async def start(self) -> Endpoints: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    def workspace(self) -> WorkspaceSpec | None:
        return None

    def down_reason(self) -> str | None:
        return None

    def activity_ports(self) -> list[int]:
        return []

    def notify_users(self, text: str) -> int:
        return 0

    def services(self) -> dict[str, Service]:
        return {}
