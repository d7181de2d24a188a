"""`berth sessions …`: list, show, stop, clone, export, logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from berth.client import BerthClient
from berth.schemas import App, SessionStatus, SessionView

from .common import err, escape, out, print_json, run
from .launch import common_overrides, wait_until_ready
from .render import sessions_table, show_session

app = typer.Typer(help="List and manage sessions.", no_args_is_help=True)


@app.command("list")
def list_(
    status: Optional[list[str]] = typer.Option(None, help="Only these statuses (repeatable)"),
    project: Optional[str] = typer.Option(None),
    active: bool = typer.Option(False, "--active", help="Only sessions that are not stopped or failed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sessions you can see, newest first."""
    if active:
        status = [s.value for s in SessionStatus if not s.is_final]
    views = run(lambda c: c.sessions(status=status, project=project))
    print_json(views) if as_json else sessions_table(views)


@app.command()
def show(session_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The session's dashboard: status, idle time, restored workspace, SSH details."""
    view = run(lambda c: c.session(session_id))
    print_json(view) if as_json else show_session(view)


async def _wait_final(client: BerthClient, view: SessionView) -> SessionView:
    with err.status(f"stopping {view.id}"):
        after = 0
        while not view.status.is_final:
            events = await client.events(view.id, after=after, wait=10)
            after = events[-1].id if events else after
            view = await client.session(view.id)
    return view


@app.command()
def stop(session_id: str, wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until it has stopped"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop a session: ends its processes, keeps its workspace."""

    async def go(c: BerthClient) -> SessionView:
        view = await c.stop(session_id)
        return await _wait_final(c, view) if wait else view

    view = run(go)
    if as_json:
        print_json(view)
    else:
        err.print(f"session {view.id}: {view.status.value}" + (f" ({escape(view.error)})" if view.error else ""))


@app.command()
def clone(
    session_id: str,
    name: Optional[str] = typer.Option(None), project: Optional[str] = typer.Option(None), tags: Optional[str] = typer.Option(None),
    queue: Optional[str] = typer.Option(None), max_idle_hours: Optional[float] = typer.Option(None),
    restore_session: Optional[str] = typer.Option(None, help="Restore another session's workspace instead of the source's"),
    idle_network_mb: Optional[float] = typer.Option(None), idle_cpu: Optional[float] = typer.Option(None),
    idle_gpu: Optional[float] = typer.Option(None),
    wait: bool = typer.Option(False, "--wait"), as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Launch a copy of a session's configuration that restores its workspace; flags edit the copy."""
    overrides = common_overrides(name, project, tags, queue, max_idle_hours, restore_session, idle_network_mb, idle_cpu, idle_gpu)

    async def go(c: BerthClient) -> SessionView:
        view = await c.clone(session_id, overrides)
        if not as_json:
            err.print(f"cloned {escape(session_id)} as [bold]{view.id}[/bold] ({escape(view.name)})")
        return await wait_until_ready(c, view, quiet=as_json) if wait else view

    view = run(go)
    print_json(view) if as_json else show_session(view)
    if wait and view.status.is_final:
        raise typer.Exit(1)


@app.command()
def export(session_id: str, output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout")) -> None:
    """The session's configuration as JSON, for `launch --config` (secrets are never exported)."""
    doc = run(lambda c: c.export(session_id))
    if output:
        output.write_text(json.dumps(doc, indent=2) + "\n")
        err.print(f"wrote {escape(str(output))}")
    else:
        print_json(doc)


@app.command()
def logs(session_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the session ends"),
         as_json: bool = typer.Option(False, "--json", help="Print the lines as one JSON list (not with --follow)")) -> None:
    """The session's console: setup progress, SSH server status, lifecycle."""

    async def go(c: BerthClient) -> list:
        after, collected = 0, []
        while True:
            events = await c.events(session_id, after=after, wait=20 if follow and after else 0)
            for e in events:
                after = e.id
                if as_json:
                    collected.append(e)
                else:
                    out.print(f"[dim]{e.ts:%Y-%m-%d %H:%M:%S}[/dim] {'[red]' if e.level == 'error' else ''}{escape(e.message)}"
                              f"{'[/red]' if e.level == 'error' else ''}", highlight=False, soft_wrap=True)
            if not follow:
                if len(events) < 500:
                    return collected
                continue
            ended = any(e.message.startswith(("status: stopped", "status: failed")) for e in events)
            if (ended or not events) and (await c.session(session_id)).status.is_final:
                return collected

    collected = run(go)
    if as_json:
        print_json(collected)


@app.command()
def sync(session_id: str, wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the result"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Store a running session's workspace now (it is also stored periodically and on stop)."""

    async def go(c: BerthClient) -> tuple[SessionView, str | None]:
        events = await c.events(session_id)
        after = events[-1].id if events else 0
        view = await c.request_sync(session_id)
        if not wait:
            return view, None
        with err.status(f"syncing the workspace of {escape(session_id)}"):
            while True:
                for e in await c.events(session_id, after=after, wait=20):
                    after = e.id
                    if e.message.startswith("workspace: on-demand sync"):
                        return await c.session(session_id), e.message
                    if e.message.startswith(("status: stopped", "status: failed")):
                        return await c.session(session_id), "the session ended before the sync"

    view, result = run(go)
    if as_json:
        print_json(view)
    elif result:
        err.print(escape(result.removeprefix("workspace: ")))
    if result and ("failed" in result or "ended" in result):
        raise typer.Exit(1)


__all__ = ["app", "App"]


# Resource metrics and idle extension (issue #4) live in cli/metrics.py.
from . import metrics as _metrics  # noqa: E402

app.command("metrics")(_metrics.metrics)
app.command("extend")(_metrics.extend)
