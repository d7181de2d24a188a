"""Apps on the worker: one :class:`AgentApp` per app a session can run (the config models live in ``berth.apps``)."""

from __future__ import annotations

from berth.errors import SetupFailed
from berth.schemas import App

from .base import AgentApp, SessionRuntime, WorkspaceSpec
from .remote_desktop import RemoteDesktopApp
from .ssh_session import SshSessionApp

# Imported up front: the supervisor zygote loads them once, and every session's fork finds them ready.
AGENT_APPS: dict[App, type[AgentApp]] = {App.ssh_session: SshSessionApp, App.remote_desktop: RemoteDesktopApp}


def get_agent_app(app: App | str) -> type[AgentApp]:
    """The worker side of `app`; a clear failure for an app this worker cannot run."""
    try:
        return AGENT_APPS[App(app)]
    except (KeyError, ValueError):
        raise SetupFailed(f"this worker cannot run {str(getattr(app, 'value', app))!r} sessions "
                          f"(it runs: {', '.join(a.value for a in AGENT_APPS)})") from None


__all__ = ["AGENT_APPS", "AgentApp", "SessionRuntime", "WorkspaceSpec", "get_agent_app"]
