"""The `berth` command. Server code is imported only by the commands that run it (fast client commands)."""

from __future__ import annotations

import typer
import typer.core

from . import auth, launch, run, sessions, ssh, ssh_proxy, workers, workspaces


def _no_type_after_flags() -> None:
    """typer's rich help (0.29) prints the value type after every option, flags included: `--json <bool>`,
    `--wait/--no-wait <bool>`, even `--help <bool>`, as if they took a value. Flags take none: show no type.
    One patch here covers every command and typer's own --help; typers without the method are left alone."""
    option = getattr(typer.core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "berth_flags_untyped", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else original(self, ctx)

    display_type_rich.berth_flags_untyped = True
    option.display_type_rich = display_type_rich


_no_type_after_flags()
app = typer.Typer(help="berth: self-hosted interactive remote sessions.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
app.command()(run.up)
app.command()(run.server)
app.command()(run.agent)
app.command()(auth.login)
app.add_typer(launch.app, name="launch")
app.add_typer(sessions.app, name="sessions")
app.add_typer(auth.tokens, name="tokens")
app.add_typer(auth.users, name="users")
app.add_typer(auth.projects, name="projects")
app.add_typer(workers.workers, name="workers")
app.add_typer(workspaces.app, name="workspaces")
app.command()(ssh.ssh)
app.command("ssh-config")(ssh.ssh_config)
app.command("ssh-proxy")(ssh_proxy.ssh_proxy)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
