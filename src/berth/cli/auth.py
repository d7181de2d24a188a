"""`berth login`, `berth tokens …`, `berth users …`, `berth projects …`."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Optional

import typer

from berth.client import BerthClient

from .common import err, escape, guard, out, print_json, run, save_credentials, settings
from .render import cut, fixed_column, id_column, list_table, text_column

tokens = typer.Typer(help="API and gateway tokens (shown once, stored hashed).", no_args_is_help=True)
users = typer.Typer(help="Users (admin).", no_args_is_help=True)
projects = typer.Typer(help="Projects and their members.", no_args_is_help=True)


def ssh_identity() -> Path:
    """The key pair `berth ssh` uses; its public half is registered with the server at login."""
    return settings().config_dir / "id_ed25519"


def ensure_ssh_identity() -> str | None:
    key = ssh_identity()
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth", "-f", str(key)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError):
            return None  # no ssh-keygen here: password login still works
    return key.with_suffix(".pub").read_text().strip()


def login(
    server: str = typer.Option(..., envvar="BERTH_SERVER", help="Server URL, e.g. http://127.0.0.1:8470"),
    username: str = typer.Option(..., "--username", "-u"),
    password: str = typer.Option(..., "--password", "-p", prompt=True, hide_input=True, envvar="BERTH_PASSWORD"),
) -> None:
    """Log in and save a token (~/.config/berth/credentials.json); registers your berth SSH key."""

    async def go():
        async with BerthClient(server) as anon:
            result = await anon.login(username, password)
        save_credentials(server.rstrip("/"), result.token, result.username)
        public_key = ensure_ssh_identity()
        if public_key:
            async with BerthClient(server, result.token) as c:
                await c.add_ssh_keys([public_key])
        return result

    result = guard(lambda: asyncio.run(go()))
    err.print(f"logged in to {escape(server)} as {escape(result.username)}")


@tokens.command("create")
def tokens_create(label: str = typer.Option("", help="What the token is for"),
                  kind: str = typer.Option("api", help="api | gateway | agent (admin: registers agents)"),
                  expires_days: Optional[float] = typer.Option(None, help="Expire after this many days"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Create a token. Its secret is printed once and cannot be shown again."""
    created = run(lambda c: c.create_token(label, kind, expires_days))
    if as_json:
        print_json(created)
    else:
        out.print(created.token, markup=False, highlight=False)  # the secret, exactly; nothing of ours in it
        err.print(f"token {created.id} ({created.kind}) created; copy it now, it is not shown again")


@tokens.command("list")
def tokens_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Your tokens (without their secrets)."""
    rows = run(lambda c: c.list_tokens())
    if as_json:
        print_json(rows)
        return
    table = list_table()  # like every list: the ID whole, a long label cut
    id_column(table, "ID", [t.id for t in rows])
    fixed_column(table, "Kind")
    text_column(table, "Label")
    fixed_column(table, "Created")
    fixed_column(table, "State")
    for t in rows:
        state = "revoked" if t.revoked else (f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "no expiry")
        table.add_row(t.id, t.kind, cut(t.label or "-"), f"{t.created_at:%Y-%m-%d}", state)
    out.print(table, highlight=False)


@tokens.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token at once."""
    run(lambda c: c.revoke_token(token_id))
    err.print(f"token {escape(token_id)} revoked")


@users.command("create")
def users_create(username: str, password: str = typer.Option(..., prompt=True, hide_input=True, envvar="BERTH_NEW_PASSWORD"),
                 admin: bool = typer.Option(False, "--admin")) -> None:
    """Create a user (admins only)."""
    user = run(lambda c: c.create_user(username, password, admin))
    err.print(f"user {escape(user.username)} created")


@projects.command("create")
def projects_create(name: str) -> None:
    """Create a project; you become its admin."""
    run(lambda c: c.create_project(name))
    err.print(f"project {escape(repr(name))} created")


@projects.command("member")
def projects_member(project: str, username: str, role: str = typer.Option("member", help="viewer | member | admin | none")) -> None:
    """Add a member to a project, change their role, or remove them (--role none)."""
    run(lambda c: c.set_member(project, username, None if role == "none" else role))
    err.print(f"{escape(username)}: {escape(role)} in {escape(repr(project))}")
