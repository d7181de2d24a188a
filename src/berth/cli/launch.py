"""`berth launch APP`: one flag per seed field, `--config FILE.json`, `--wait` with progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from berth.apps import parse_document
from berth.apps.remote_desktop import env_pairs
from berth.client import BerthClient
from berth.errors import InvalidInput
from berth.schemas import App, LaunchRequest, SessionStatus, SessionView

from .common import err, escape, guard, print_json, run
from .render import show_session

app = typer.Typer(help="Launch a new session.", no_args_is_help=True)


def common_overrides(name, project, tags, queue, max_idle_hours, restore_session, idle_network_mb, idle_cpu, idle_gpu) -> dict[str, Any]:
    values = {"name": name, "project": project, "tags": tags, "queue": queue, "max_idle_hours": max_idle_hours,
              "restore_session": restore_session, "idle_network_mb": idle_network_mb, "idle_cpu": idle_cpu, "idle_gpu": idle_gpu}
    return {k: v for k, v in values.items() if v is not None}


def load_config_file(path: Path | None, app: App) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"--config: no such file {str(path)!r}", field="config") from None
    except ValueError as exc:
        raise InvalidInput(f"--config: {path} is not valid JSON ({exc})", field="config") from None
    _app, config = parse_document(doc, app)  # an exported document or a bare configuration object
    return config.model_dump(mode="json", exclude_unset=True)


async def wait_until_ready(client: BerthClient, view: SessionView, quiet: bool) -> SessionView:
    """Follow the console until the session is active (or idle), or has ended."""
    after = 0
    with err.status(f"session {view.id}: {view.status.value}", spinner="dots") as status:
        while True:
            events = await client.events(view.id, after=after, wait=10)
            changed = not events
            for event in events:
                after = event.id
                # Console lines are the session's (init script output): escaped, cut before escaping.
                status.update(f"session {view.id}: {escape(event.message[:100])}")
                if not quiet:
                    err.print(f"[dim]{event.ts:%H:%M:%S}[/dim] {escape(event.message)}", highlight=False)
                changed = changed or event.message.startswith("status:")
            if changed:
                view = await client.session(view.id)
                if view.status in (SessionStatus.active, SessionStatus.idle) or view.status.is_final:
                    return view


def do_launch(app_kind: App, config: dict[str, Any], secrets: dict[str, Any], wait: bool, as_json: bool, quiet: bool) -> None:
    request = LaunchRequest(app=app_kind, config=config, secrets=secrets)

    async def go(client: BerthClient) -> SessionView:
        view = await client.launch(request)
        if not as_json:
            err.print(f"launched {view.app.value} session [bold]{view.id}[/bold] ({escape(view.name)}) "
                      f"on queue {escape(repr(view.queue))}")
            for event in await client.events(view.id):  # what the server noticed at launch (no worker on the queue)
                if event.level == "warning":
                    err.print(f"[yellow]warning:[/yellow] {escape(event.message)}", highlight=False)
        if wait:
            view = await wait_until_ready(client, view, quiet=quiet or as_json)
        return view

    view = run(go)
    if as_json:
        print_json(view)
    elif wait:
        show_session(view)
    if wait and view.status.is_final:
        err.print(f"[red]session {view.id} {view.status.value}[/red]: {escape(view.error or 'stopped before it was ready')}",
                  highlight=False)
        raise typer.Exit(1)


@app.command("ssh-session")
def ssh_session(
    config_file: Optional[Path] = typer.Option(None, "--config", help="Configuration JSON (as written by `sessions export`); flags override it"),
    name: Optional[str] = typer.Option(None, help="Interactive session name"),
    project: Optional[str] = typer.Option(None, help="Project (default 'Interactive Session')"),
    tags: Optional[str] = typer.Option(None, help="Comma separated tags"),
    queue: Optional[str] = typer.Option(None, help="Queue (default 'default')"),
    max_idle_hours: Optional[float] = typer.Option(None, help="Maximum idle time in hours"),
    restore_session: Optional[str] = typer.Option(None, help="Restore the workspace of this session ID"),
    idle_network_mb: Optional[float] = typer.Option(None, help="Idle network threshold (MB/s)"),
    idle_cpu: Optional[float] = typer.Option(None, help="Idle CPU threshold (%)"),
    idle_gpu: Optional[float] = typer.Option(None, help="Idle GPU threshold (%)"),
    git_repo: Optional[str] = typer.Option(None, help="Git repository cloned into the workspace"),
    git_branch: Optional[str] = typer.Option(None, help="Git branch"),
    git_commit: Optional[str] = typer.Option(None, help="Git commit"),
    git_token_file: Optional[Path] = typer.Option(None, help="File holding a token for a private HTTPS repository (or env BERTH_GIT_TOKEN)"),
    git_ssh_key: Optional[Path] = typer.Option(None, help="Private key file for cloning over SSH"),
    image: Optional[str] = typer.Option(None, help="Container image (container backend)"),
    container_args: Optional[str] = typer.Option(None, help="Extra container arguments"),
    init_script: Optional[Path] = typer.Option(None, help="Bash script run before the SSH server starts"),
    packages: Optional[str] = typer.Option(None, help='Extra Python packages, e.g. "numpy pandas==2.2"'),
    workspace: Optional[str] = typer.Option(None, help="Persistent workspace path (default ~/workspace)"),
    dropbear: Optional[bool] = typer.Option(None, "--dropbear/--openssh", help="Use Dropbear instead of OpenSSH"),
    wait: bool = typer.Option(False, "--wait", help="Return when the session is ready (exit 0) or failed (exit 1)"),
    as_json: bool = typer.Option(False, "--json", help="Print the session as one JSON document"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print console lines while waiting"),
) -> None:
    """Launch an SSH Session: a prepared dev environment with its own SSH server."""
    import os

    def build() -> tuple[dict, dict]:
        config = load_config_file(config_file, App.ssh_session)
        config.update(common_overrides(name, project, tags, queue, max_idle_hours, restore_session, idle_network_mb, idle_cpu, idle_gpu))
        extra = {"git_repo": git_repo, "git_branch": git_branch, "git_commit": git_commit, "image": image,
                 "container_args": container_args, "packages": packages, "workspace": workspace, "dropbear": dropbear}
        config.update({k: v for k, v in extra.items() if v is not None})
        if init_script is not None:
            try:
                config["init_script"] = init_script.read_text()
            except OSError as exc:
                raise InvalidInput(f"--init-script: cannot read {init_script}: {exc.strerror}", field="init_script") from None
        secrets: dict[str, str] = {}
        token = git_token_file.read_text().strip() if git_token_file else os.environ.get("BERTH_GIT_TOKEN")
        if token:
            secrets["git_token"] = token
        if git_ssh_key:
            secrets["git_ssh_key"] = git_ssh_key.read_text()
        return config, secrets

    config, secrets = guard(build)
    do_launch(App.ssh_session, config, secrets, wait, as_json, quiet)


@app.command("remote-desktop")
def remote_desktop(
    config_file: Optional[Path] = typer.Option(None, "--config", help="Configuration JSON (as written by `sessions export`); flags override it"),
    name: Optional[str] = typer.Option(None, help="Application session name"),
    kind: Optional[str] = typer.Option(None, "--type", metavar="<desktop|ssh>",
                                       help="desktop: a remote desktop in the browser (default); ssh: SSH access"),
    project: Optional[str] = typer.Option(None, help="Project (default 'Interactive Session')"),
    tags: Optional[str] = typer.Option(None, help="Comma separated tags"),
    queue: Optional[str] = typer.Option(None, help="Queue (default 'default')"),
    max_idle_hours: Optional[float] = typer.Option(None, help="Idle time limit in hours"),
    env: Optional[list[str]] = typer.Option(None, "--env", metavar="<KEY=VALUE>",
                                            help="Environment variable set in the session (repeatable)"),
    workspace: Optional[str] = typer.Option(None, help="Persistent workspace path (default ~/workspace)"),
    restore_session: Optional[str] = typer.Option(None, help="Restore the workspace of this session ID"),
    idle_network_mb: Optional[float] = typer.Option(None, help="Idle network threshold (MB/s)"),
    idle_cpu: Optional[float] = typer.Option(None, help="Idle CPU threshold (%)"),
    idle_gpu: Optional[float] = typer.Option(None, help="Idle GPU threshold (%)"),
    wait: bool = typer.Option(False, "--wait", help="Return when the session is ready (exit 0) or failed (exit 1)"),
    as_json: bool = typer.Option(False, "--json", help="Print the session as one JSON document"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print console lines while waiting"),
) -> None:
    """Launch a Remote Desktop: a graphical desktop in the browser, or SSH access."""

    def build() -> dict:
        config = load_config_file(config_file, App.remote_desktop)
        config.update(common_overrides(name, project, tags, queue, max_idle_hours, restore_session, idle_network_mb, idle_cpu, idle_gpu))
        config.update({k: v for k, v in {"type": kind, "workspace": workspace}.items() if v is not None})
        if env:  # each --env sets one variable over the file's (the server checks names and values)
            try:
                config["env"] = {**config.get("env", {}), **env_pairs(env)}
            except ValueError as exc:
                raise InvalidInput(f"--env: {exc}", field="env") from None
        return config

    do_launch(App.remote_desktop, guard(build), {}, wait, as_json, quiet)
