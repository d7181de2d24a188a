"""Human output: the session dashboard and lists (JSON output lives in common.print_json)."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.table import Table

from berth.schemas import SessionView

from .common import out

_STATUS_STYLE = {"setting up": "yellow", "active": "green", "idle": "cyan", "stopped": "dim", "failed": "red"}


def ago(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    seconds = (datetime.now(timezone.utc) - ts).total_seconds()
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_text(view: SessionView) -> str:
    style = _STATUS_STYLE.get(view.dashboard_status, "")
    return f"[{style}]{view.status.value}[/{style}]" if style else view.status.value


def show_session(view: SessionView) -> None:
    """The seed's dashboard items, in its order."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Status", f"{status_text(view)} ({view.dashboard_status})")
    table.add_row("Idle time", duration(view.idle_seconds))
    table.add_row("Restored workspace", view.restored_from or "-")
    table.add_row("Current session ID", view.id)
    table.add_row("Name", f"{view.name}  [dim]project {view.project}, queue {view.queue}, owner {view.owner}[/dim]")
    if view.tags:
        table.add_row("Tags", ", ".join(view.tags))
    if view.ssh:
        table.add_row("SSH host:port", f"{view.ssh.host}:{view.ssh.port}  [dim]({view.ssh.server})[/dim]")
        table.add_row("User", view.ssh.user)
        table.add_row("Password", view.ssh.password)
        table.add_row("Connect command", view.ssh.command)
        if view.ssh.host_key_fingerprint:
            table.add_row("Host key", view.ssh.host_key_fingerprint)
    if view.worker:
        table.add_row("Worker", view.worker)
    if view.error:
        table.add_row("Error", f"[red]{view.error}[/red]")
    out.print(table, highlight=False)


def sessions_table(views: list[SessionView]) -> None:
    table = Table()
    for col in ("ID", "Name", "App", "Status", "Project", "Queue", "Worker", "Created"):
        table.add_column(col)
    for v in views:
        table.add_row(v.id, v.name, v.app.value, status_text(v), v.project, v.queue, v.worker or "-", ago(v.created_at))
    out.print(table)
