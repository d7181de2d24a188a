"""The container backend's SSH bundle (``berth.agent.ssh.bundle``, mounted read-only at ``/berth``): made sure of
at each prepare; when that builds a new one (the worker's tools changed), the older bundles go unless a session
container still mounts one, as the engine says."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .container_cli import ContainerCli

Engine = Callable[[list[str]], tuple[int, str]]  # argv -> (exit status, stdout)


def ssh_bundle(session_dir: Path, cli: ContainerCli, engine: Engine):
    from berth.agent.ssh.bundle import cache_dir_for, ensure_bundle  # loaded only by container sessions

    return ensure_bundle(cache_dir_for(session_dir), mounted=lambda: session_mounts(cli, engine))


def session_mounts(cli: ContainerCli, engine: Engine) -> list[str] | None:
    """The host paths every session container on this worker mounts (running or not), or None when the engine
    cannot say (nothing is then taken for unused)."""
    status, names = engine(cli.list_sessions_argv())
    if status:
        return None
    sources = []
    for name in names.split():
        status, out = engine(cli.inspect_argv(name, "{{json .Mounts}}"))
        try:
            if status:
                return None
            sources += [m["Source"] for m in json.loads(out) if m.get("Source")]
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
    return sources
