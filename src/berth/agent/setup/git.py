"""Cloning the session's git repository into its workspace, or fetching into a restored checkout.

Secrets only go into files in a private dir (``commands.private_dir``) and env vars: never argv (readable by
every user via ps) nor the URL (stored in .git/config)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from berth.agent.run_as import RunAs
from berth.errors import SetupFailed
from berth.redaction import redact

from .commands import Emit, private_dir, session_run_as, tool_env, write_private

if TYPE_CHECKING:
    from berth.agent.backends.base import SessionBackend

_ASKPASS = """#!/bin/sh
# git asks for a username unless the URL carries one, then for the password: the token (from env)
case "$1" in
  Username*) printf '%s\\n' "${BERTH_GIT_USERNAME:-oauth2}" ;;
  *) printf '%s\\n' "$BERTH_GIT_TOKEN" ;;
esac
"""


def repo_dir_name(repo: str) -> str:
    """'https://host/org/name.git' and 'git@host:org/name.git' -> 'name'."""
    name = re.split(r"[/:]", repo.rstrip("/"))[-1].removesuffix(".git")
    return name if name not in ("", ".", "..") else "repo"


def git_command(private: Path, *, token: str | None, ssh_key: str | None,
                run_as: RunAs) -> tuple[list[str], dict[str, str]]:
    """git's argv prefix and environment, its secrets written (for run_as) into `private`."""
    env = tool_env(run_as) | {"GIT_TERMINAL_PROMPT": "0"}  # fail instead of prompting
    git = ["git"]
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    if token:
        askpass = private / "askpass"
        write_private(askpass, _ASKPASS, 0o700, run_as)
        env |= {"GIT_ASKPASS": str(askpass), "BERTH_GIT_TOKEN": token}
        git += ["-c", "credential.helper="]  # a configured helper must not store the token
    if ssh_key:
        key = private / "ssh-key"
        write_private(key, ssh_key if ssh_key.endswith("\n") else ssh_key + "\n", 0o600, run_as)  # ssh wants the final newline
        ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    return git, env


async def clone_git(repo: str, dest: Path, *, branch: str | None, commit: str | None, token: str | None,
                    ssh_key: str | None, backend: SessionBackend, emit: Emit, scratch: Path) -> Path:
    """Clone repo into dest/<repo name> in the session and return that path. If it already holds a checkout
    (restored workspace), fetch instead, and move it to branch/commit only when it has no local changes."""
    for what, value in (("repository", repo), ("branch", branch), ("commit", commit)):
        if value is not None and (not value or value.startswith("-")):  # never let git take it for an option
            raise SetupFailed(f"invalid git {what}: {value!r}")
    run_as = session_run_as(backend)
    secrets = [token, ssh_key]
    shown = redact(repo, secrets)
    dest = Path(dest)
    target = dest / repo_dir_name(repo)
    if not dest.exists():
        dest.mkdir(parents=True)
        if run_as.is_other:
            os.chown(dest, run_as.uid, run_as.gid)
    with private_dir(scratch, run_as, backend.host.setup_dir) as private:
        git, env = git_command(private, token=token, ssh_key=ssh_key, run_as=run_as)

        async def run_git(*args: str, what: str, quiet: bool = False) -> tuple[int, list[str]]:
            on_line = None if quiet else (lambda line: emit(redact(line, secrets)))
            status, tail = await backend.run_in_session([*git, *args], env=env, cwd=dest, on_line=on_line)
            if status == 127:  # the shell's "command not found", also what a container whose image lacks git says
                raise SetupFailed("git is not installed where this session runs (on the worker; a container brings "
                                  "the worker's git when its image has none): install git, or launch without a git "
                                  "repository")
            if status and what:
                reason = "\n".join(line for line in tail if not line.startswith("Cloning into"))
                raise SetupFailed(f"{what} failed: " + redact(reason, secrets))
            return status, tail

        at = ["-C", str(target)]
        if (target / ".git").exists():
            emit(f"{target} already holds a git checkout (restored workspace): fetching {shown}")
            await run_git(*at, "fetch", "origin", what=f"git fetch of {shown}")
            if branch or commit:
                _, changes = await run_git(*at, "status", "--porcelain", "--untracked-files=no", what="git status",
                                           quiet=True)
                if changes:
                    emit("it has local changes: keeping its current checkout")
                    return target
                if branch and not commit:
                    await run_git(*at, "checkout", branch, what=f"checking out branch {branch}")
        else:
            if target.exists() and any(target.iterdir()):
                raise SetupFailed(f"cannot clone {shown}: {target} exists and is not a git checkout")
            emit(f"cloning {shown}" + (f" (branch {branch})" if branch else "") + f" into {target}")
            await run_git("clone", *(["--branch", branch] if branch else []), "--", repo, str(target),
                          what=f"git clone of {shown}")
        if commit:
            missing, _ = await run_git(*at, "cat-file", "-e", f"{commit}^{{commit}}", what="", quiet=True)
            if missing:  # not on any fetched branch (e.g. a pull request's commit): ask for it by id
                await run_git(*at, "fetch", "origin", commit, what=f"fetching commit {commit}")
            await run_git(*at, "-c", "advice.detachedHead=false", "checkout", "--detach", commit,
                          what=f"checking out commit {commit}")
            emit(f"checked out commit {commit}")
    return target
