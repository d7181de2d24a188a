"""The `berth` command. Server code is imported only by the commands that run it (fast client commands)."""

from __future__ import annotations

import typer

from . import auth, launch, metrics, run, sessions, ssh, workspaces

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
app.add_typer(metrics.workers, name="workers")
app.add_typer(workspaces.app, name="workspaces")
app.command()(ssh.ssh)
app.command("ssh-config")(ssh.ssh_config)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
