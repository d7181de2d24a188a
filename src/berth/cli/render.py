"""Human output: the session dashboard and lists (JSON output lives in common.print_json)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from rich.table import Table
from rich.text import Text

from berth.schemas import SessionView

from .common import escape, out

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
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # what people copy (password, command, host key): wrapped if need be, never cut
    table.add_row("Status", f"{status_text(view)} ({view.dashboard_status})")
    table.add_row("Idle time", duration(view.idle_seconds))
    table.add_row("Restored workspace", escape(view.restored_from or "-"))
    table.add_row("Current session ID", view.id)
    table.add_row("Name", f"{escape(view.name)}  [dim]project {escape(view.project)}, queue {escape(view.queue)}, "
                          f"owner {escape(view.owner)}[/dim]")
    if view.tags:
        table.add_row("Tags", escape(", ".join(view.tags)))
    if view.ssh:
        table.add_row("SSH host:port", f"{escape(view.ssh.host)}:{view.ssh.port}  [dim]({escape(view.ssh.server)})[/dim]")
        table.add_row("User", escape(view.ssh.user))
        table.add_row("Password", escape(view.ssh.password))
        table.add_row("Connect command", escape(view.ssh.command))
        if view.ssh.host_key_fingerprint:
            table.add_row("Host key", escape(view.ssh.host_key_fingerprint))
    if view.worker:
        table.add_row("Worker", escape(view.worker))
    if view.error:
        table.add_row("Error", f"[red]{escape(view.error)}[/red]")
    out.print(table, highlight=False)


# Lists at 80 columns. IDs are what people copy: whole, on one line, always. Free text (names, projects, hosts)
# gives way: cut with "…" on one line. Rich shrinks only wrappable columns to fit the width, so those columns stay
# wrappable and their cells are `cut()` Texts that refuse to wrap (and, being Text, are never read as markup).
# No borders: two spaces between columns leave room for the names (a boxed 8-column table needs 25 of 80).

def list_table() -> Table:
    return Table(box=None, pad_edge=False)


def id_column(table: Table, header: str, ids: Iterable[str], **kw) -> None:
    table.add_column(header, no_wrap=True, min_width=max((len(i) for i in ids), default=len(header)), **kw)


def fixed_column(table: Table, header: str, **kw) -> None:
    """Short values of our own making (status, app, sizes, ages): kept whole."""
    table.add_column(header, no_wrap=True, **kw)


def text_column(table: Table, header: str, **kw) -> None:
    table.add_column(header, overflow="ellipsis", **kw)


def cut(text: str) -> Text:
    return Text(text, no_wrap=True, overflow="ellipsis")


def sessions_table(views: list[SessionView]) -> None:
    table = list_table()
    id_column(table, "ID", [v.id for v in views])
    text_column(table, "Name")
    fixed_column(table, "App")
    fixed_column(table, "Status")
    for col in ("Project", "Queue", "Worker"):
        text_column(table, col)
    fixed_column(table, "Created")
    for v in views:
        table.add_row(v.id, cut(v.name), v.app.value, status_text(v), cut(v.project), cut(v.queue), cut(v.worker or "-"),
                      ago(v.created_at))
    out.print(table)
