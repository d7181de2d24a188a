"""`berth workspaces …`: list workspace snapshots, download one into a local directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from berth.client import BerthClient

# The snapshot engine (zstandard, thread pools) is imported by the commands that use it: every other
# `berth` command starts ~0.1 s sooner.
if TYPE_CHECKING:
    from berth.workspace.schemas import SnapshotView
    from berth.workspace.sync import SnapshotInfo

from .common import err, escape, fail, out, print_json, run
from .render import ago, cut, fixed_column, id_column, list_table, text_column

app = typer.Typer(help="Workspace snapshots: list them, download one.", no_args_is_help=True)


@app.command("list")
def list_(
    session: Optional[str] = typer.Option(None, "--session", help="Only the snapshots of this session"),
    project: Optional[str] = typer.Option(None, help="Only the snapshots of this project"),
    limit: int = typer.Option(100, min=1, max=1000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Snapshots you can see, newest first: id, session, time, files, size, bytes new."""

    from berth.workspace.api import WorkspaceApi
    from berth.workspace.sync import human

    async def go(c: BerthClient) -> list[SnapshotView]:
        api = WorkspaceApi(c)
        try:
            return await api.snapshots(session=session, project=project, limit=limit)
        finally:
            api.close()

    views = run(go)
    if as_json:
        print_json(views)
        return
    table = list_table()
    id_column(table, "ID", [v.id for v in views])
    id_column(table, "Session", [v.session_id for v in views])
    text_column(table, "Project")
    fixed_column(table, "Taken")
    for col in ("Files", "Size", "New"):
        fixed_column(table, col, justify="right")
    for v in views:
        table.add_row(v.id, v.session_id, cut(v.project), ago(v.created_at), str(v.files), human(v.bytes_total), human(v.bytes_new))
    out.print(table)


class _LazyProgress:
    """A progress bar that appears only once a download has taken more than a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:  # from the restore's worker threads
        with self.lock:
            if self.bar is None:
                if time.monotonic() - self.started < 1.0:
                    return
                self.bar = Progress(TextColumn("restoring"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                    TimeRemainingColumn(), console=err, transient=True)
                self.bar.start()
                self.task = self.bar.add_task("restore", total=total)
            self.bar.update(self.task, completed=done)

    def stop(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()


@app.command()
def download(snapshot: str = typer.Argument(..., help="Snapshot id (see `berth workspaces list`)"),
             directory: Path = typer.Argument(..., help="Where to restore it: a new or empty directory"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Restore a snapshot into a local directory: contents, modes, symlinks, empty directories, mtimes."""
    if directory.is_symlink() or (directory.exists() and (not directory.is_dir() or any(directory.iterdir()))):
        fail(f"{directory} must be a new or empty directory")
    from berth.workspace.sync import human, restore_snapshot

    progress = _LazyProgress()

    async def go(c: BerthClient) -> SnapshotInfo:
        try:
            return await restore_snapshot(c, snapshot, directory, emit=lambda line: None, progress=progress)
        finally:
            progress.stop()

    info = run(go)
    if as_json:
        print_json(info.__dict__)
    else:
        err.print(f"restored snapshot {info.id} of session {info.session_id}: {info.files} files, {human(info.bytes_total)} "
                  f"into {escape(str(directory))}", highlight=False)
    if info.dropped_bits and not as_json:
        err.print(info.dropped_bits, highlight=False, markup=False)
