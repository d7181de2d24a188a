"""What the instance dashboard shows beyond the session view: the idle shutdown clock, the VS Code link, the
workspace snapshots. Pure reads over the same services the API uses; the routes live in `instance.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import SessionView
from berth.server.db.models import User
from berth.server.services import workspaces
from berth.server.services.access import Principal
from berth.workspace.schemas import SnapshotView

SNAPSHOTS_SHOWN = 20
EXTEND_HOURS = (1, 4, 8, 24)  # the Extend button's choices


@dataclass(frozen=True)
class IdleClock:
    """The idle rule as the agent applies it (agent/idle.py `deadline`): shut down max_idle after idleness
    began, not before an extension. Idle: `left_s` is the time left; busy: the soonest it could be."""

    max_idle_s: float
    left_s: float
    idle: bool
    extended_until: datetime | None

    @property
    def key(self) -> str:
        """Minutes, so the polled part of the page changes when the clock visibly does."""
        return f"{int(self.left_s // 60)}:{self.idle}:{self.extended_until}"


def idle_clock(view: SessionView, now: datetime | None = None) -> IdleClock | None:
    if view.status.value not in ("active", "idle"):
        return None
    now = now or datetime.now(timezone.utc)
    max_idle_s = float(view.config.get("max_idle_hours", 4.0)) * 3600
    extended = view.idle_extended_until
    if extended is not None and extended.tzinfo is None:
        extended = extended.replace(tzinfo=timezone.utc)
    extension_left = (extended - now).total_seconds() if extended else 0.0
    idle = view.status.value == "idle"
    left = max((max_idle_s - view.idle_seconds) if idle else max_idle_s, extension_left, 0.0)
    return IdleClock(max_idle_s, left, idle, extended if extension_left > 0 else None)


def vscode_url(view: SessionView) -> str | None:
    """VS Code Remote-SSH's link form, vscode://vscode-remote/ssh-remote+<host><folder>, with the host entry
    `berth ssh-config` writes (berth-<id>: through the berth server, so it works when the worker's port is not
    reachable; its user, key and pinned host key). The folder must be absolute; a workspace inside the home
    (~/…) cannot be named before the home is known, so the link then opens the host and the page names the folder."""
    if view.ssh is None:
        return None
    authority = quote(f"berth-{view.id}", safe="")
    folder = str(view.config.get("workspace") or "")
    path = quote(folder, safe="/") if folder.startswith("/") else ""
    return f"vscode://vscode-remote/ssh-remote+{authority}{path or '/'}"


async def snapshots(db: AsyncSession, user: User, session_id: str) -> list[SnapshotView]:
    """The session's snapshots, newest first, through the same listing (and authorization) as the API."""
    return await workspaces.list_snapshots(db, Principal(kind="user", user=user), session_id, None, SNAPSHOTS_SHOWN)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
