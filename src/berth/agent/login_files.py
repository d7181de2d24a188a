"""What a login gets: sshd's forced-command wrapper, the session's ~/.bash_profile, and its environment
(``session_env``, for SSH servers that set it themselves and for the init script).

The files are written by the session user itself (the ``login_files`` task of ``berth.agent.as_session``);
kept free of heavy imports because that helper starts for it.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from berth.agent.run_as import RunAs

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
SESSION_ENV_VAR = "BERTH_SESSION_ID"  # every login and the init script carry it: ``proctable`` finds them by it

_MARKER = "# berth session "
_SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server")


def _atomic_write(path: Path, text: str, mode: int) -> None:
    """Write via a temp file + rename: sshd or a login never sees half a file, and a link there is replaced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def session_bin_dir(home: Path, venv: Path | None) -> Path:
    """The directory first on the session's PATH: the venv's bin, or ~/.berth/bin for an app without a venv
    (where helpers such as ``berth-sync`` go)."""
    return Path(venv) / "bin" if venv is not None else Path(home) / ".berth" / "bin"


def write_login_files(home: Path, workspace: Path, venv: Path | None, session_id: str, wrapper_path: Path,
                      env: dict[str, str] | None = None) -> None:
    """Write sshd's forced-command wrapper and home/.bash_profile (see the docstring of each file), as whoever
    calls it: the session user, through ``berth.agent.as_session``. `env`: the user's own variables, exported
    by the wrapper (sshd and dropbear do not pass the session's environment on)."""
    q, home, wrapper_path = shlex.quote, Path(home), Path(wrapper_path)
    bin_dir = session_bin_dir(home, venv)
    exports = (f"{SESSION_ENV_VAR}={q(session_id)} BERTH_WORKSPACE={q(str(workspace))} "
               f"BERTH_BIN={q(str(bin_dir))}")
    if venv is not None:
        exports = f"VIRTUAL_ENV={q(str(venv))} {exports}"
    user_exports = "".join(f"export {key}={q(value)}\n" for key, value in (env or {}).items())
    sftp = next((p for p in _SFTP_SERVERS if os.path.exists(p)), _SFTP_SERVERS[0])
    wrapper = f"""#!/bin/bash
{_MARKER}{session_id}: sshd runs this for every connection (ForceCommand), so that commands,
# sftp and interactive shells all get the session environment and start in the workspace.
{user_exports}export HOME={q(str(home))} {exports}
# BERTH_TOOLS: what the SSH server brings where the system may lack it (scp, rsync in a container), last
export PATH="$BERTH_BIN:{BASE_PATH}${{BERTH_TOOLS:+:$BERTH_TOOLS}}" SHELL=/bin/bash LANG="${{LANG:-C.UTF-8}}"
cd "$BERTH_WORKSPACE" 2>/dev/null || cd "$HOME" 2>/dev/null
case "$SSH_ORIGINAL_COMMAND" in
  "") exec /bin/bash -l ;;
  internal-sftp*) exec {q(sftp)} ;;  # ForceCommand also receives the sftp subsystem
  *) exec /bin/bash -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""
    if not wrapper_path.parent.exists():
        wrapper_path.parent.mkdir(parents=True)
        os.chmod(wrapper_path.parent, 0o755)  # whatever our umask: the session user must reach it
    _atomic_write(wrapper_path, wrapper, 0o755)

    profile = f"""{_MARKER}{session_id}: written by berth; a previous ~/.bash_profile is kept as
# ~/.bash_profile.before-berth and sourced here.
if [ -f ~/.bash_profile.before-berth ]; then . ~/.bash_profile.before-berth
elif [ -f ~/.profile ]; then . ~/.profile  # Debian's ~/.profile sources ~/.bashrc itself
else case $- in *i*) [ -f ~/.bashrc ] && . ~/.bashrc ;; esac
fi
# Debian's /etc/profile resets PATH for login shells: put the session's bin (its venv's) first again.
export {exports}
export PATH="$BERTH_BIN:$PATH${{BERTH_TOOLS:+:$BERTH_TOOLS}}"
cd "$BERTH_WORKSPACE" 2>/dev/null || true
"""
    path = home / ".bash_profile"
    if os.path.lexists(path) and (path.is_symlink() or not path.read_text(errors="replace").startswith(_MARKER)):
        os.replace(path, home / ".bash_profile.before-berth")  # the user's own: keep it, ours sources it
    _atomic_write(path, profile, 0o644)


def session_env(session_id: str, run_as: RunAs, venv: Path | None, workspace: Path,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the session's processes: what the wrapper and ~/.bash_profile export (`venv` None:
    an app without one)."""
    bin_dir = session_bin_dir(run_as.home, venv)
    env = {"HOME": str(run_as.home), "USER": run_as.user, "LOGNAME": run_as.user, "SHELL": "/bin/bash",
           "PATH": f"{bin_dir}:{BASE_PATH}", "BERTH_WORKSPACE": str(workspace), "BERTH_BIN": str(bin_dir),
           "LANG": "C.UTF-8", **({"VIRTUAL_ENV": str(venv)} if venv is not None else {}), **(extra or {})}
    env[SESSION_ENV_VAR] = session_id  # set last: teardown finds the session's processes by it
    return env
