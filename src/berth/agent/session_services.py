"""What a session serves inside the worker, by name, for the tunnel: written by the supervisor once the app
has started, read by the agent when the gateway opens a stream. The gateway sends only a session id and a
service name; the address comes from here, never from a client."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from berth.private_files import open_private

SERVICES_FILE = "services.json"
INPUT_STAMP = "input.stamp"  # touched by the agent when a viewer's keyboard/pointer input crosses the tunnel

PROTOCOLS = ("ssh", "rfb", "http")


@dataclass(frozen=True)
class Service:
    """One address inside the worker: a loopback TCP port or a unix socket, and what it speaks."""

    protocol: str               # ssh | rfb | http
    port: int | None = None
    host: str = "127.0.0.1"
    path: str | None = None     # a unix socket
    uid: int | None = None      # a port the user's own programs serve: only a listener of this uid is reached

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")
        if (self.port is None) == (self.path is None):
            raise ValueError("a service is a port or a unix socket path")


def write_services(session_dir: Path, services: dict[str, Service]) -> None:
    tmp = session_dir / (SERVICES_FILE + ".tmp")
    with open_private(tmp, "w") as f:
        json.dump({name: asdict(svc) for name, svc in services.items()}, f)
    os.replace(tmp, session_dir / SERVICES_FILE)


def read_services(session_dir: Path) -> dict[str, Service]:
    try:
        data = json.loads((session_dir / SERVICES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {name: Service(**value) for name, value in data.items()}


def clear_services(session_dir: Path) -> None:
    (session_dir / SERVICES_FILE).unlink(missing_ok=True)


def touch_input(session_dir: Path) -> None:
    path = session_dir / INPUT_STAMP
    try:
        os.utime(path)
    except FileNotFoundError:
        with open_private(path, "w"):
            pass


def last_input(session_dir: Path) -> float | None:
    """When a viewer last sent input through the tunnel (epoch seconds), or None."""
    try:
        return (session_dir / INPUT_STAMP).stat().st_mtime
    except FileNotFoundError:
        return None


def input_age(session_dir: Path) -> float | None:
    last = last_input(session_dir)
    return None if last is None else max(0.0, time.time() - last)
