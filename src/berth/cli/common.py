"""What every CLI command shares: credentials, running async code, printing JSON or rich output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from berth.client import BerthClient
from berth.errors import BerthError, Unauthorized
from berth.private_files import ensure_private_dir, open_private, tighten
from berth.settings import ClientSettings

T = TypeVar("T")
out = Console(soft_wrap=True)  # stdout: tables and documents
err = Console(stderr=True, soft_wrap=True)  # progress and messages, so `--json` stdout holds one document only
# Both consoles read [tags] as markup. Text that users or the server control (names, console lines, paths, error
# messages quoting input) goes through `escape` inside a markup string, or into a `rich.text.Text`: printed as typed,
# and a stray "[/x]" in it cannot make rich raise MarkupError. markup=False is for strings holding no tag of ours.


def settings() -> ClientSettings:
    return ClientSettings()


def credentials_path() -> Path:
    return settings().config_dir / "credentials.json"


def save_credentials(server: str, token: str, username: str) -> None:
    path = credentials_path()
    # The token is as good as the password: 0700/0600 whatever the umask, and whatever an older berth left.
    tighten([ensure_private_dir(path.parent, private_parents=True)])
    with open_private(path, "w") as f:
        json.dump({"server": server, "token": token, "username": username}, f)


def load_credentials() -> tuple[str, str]:
    s = settings()
    saved: dict = {}
    try:
        saved = json.loads(credentials_path().read_text())
    except (FileNotFoundError, ValueError):
        pass
    server = s.server or saved.get("server")
    token = s.token or saved.get("token")
    if not server or not token:
        raise Unauthorized("not logged in: run `berth login --server URL --username U --password P`, or set BERTH_SERVER and BERTH_TOKEN")
    return server, token


def client() -> BerthClient:
    server, token = load_credentials()
    return BerthClient(server, token, timeout=settings().timeout_s)


def run(fn: Callable[[BerthClient], Awaitable[T]]) -> T:
    """Run an async call with a logged-in client; errors become a clear message and exit code 1."""

    async def _go() -> T:
        async with client() as c:
            return await fn(c)

    return guard(lambda: asyncio.run(_go()))


def run_loop(main: Awaitable[T]) -> T:
    """asyncio.run, on uvloop when it is installed (uvicorn[standard] brings it): the tunnel's processes spend
    their time moving bytes between sockets, which uvloop does at a fraction of the CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except BerthError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)
