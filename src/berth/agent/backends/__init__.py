"""Session backends: where a session's processes run."""

from __future__ import annotations

from .base import SessionBackend, SessionHost
from .container import ContainerBackend
from .process import ProcessBackend

BACKENDS: dict[str, type[SessionBackend]] = {"process": ProcessBackend, "container": ContainerBackend}


def get_backend(name: str) -> type[SessionBackend]:
    from berth.errors import InvalidInput

    try:
        return BACKENDS[name]
    except KeyError:
        raise InvalidInput(f"backend: unknown backend {name!r} (available: {', '.join(BACKENDS)})", field="backend") from None


__all__ = ["BACKENDS", "SessionBackend", "SessionHost", "ProcessBackend", "ContainerBackend", "get_backend"]
