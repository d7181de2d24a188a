"""Helper tasks on a few files in the home: make directories, write files, write the login files.

Light on imports on purpose: a helper starts (and imports this module before it drops root) for each call.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from berth.agent.login_files import write_login_files


def make_dirs(channel, *, paths: list[str], mode: int = 0o755) -> None:
    for path in paths:
        os.makedirs(path, mode=mode, exist_ok=True)


def write_files(channel, *, files: list[dict[str, Any]]) -> None:
    """Each {path, content, mode[, parent_mode]}: written whole to a temp file and renamed over the path (which
    replaces a symlink there rather than writing through it); parent directories created as needed."""
    for spec in files:
        path = Path(spec["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        if "parent_mode" in spec:  # e.g. ~/.ssh must be 0700 for sshd's StrictModes
            os.chmod(path.parent, spec["parent_mode"])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(spec["content"])
            os.chmod(tmp, spec["mode"])
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def login_files(channel, *, home: str, workspace: str, venv: str | None, session_id: str, wrapper: str,
                authorized_keys: str | None = None, env: dict[str, str] | None = None) -> None:
    """What a login needs: the workspace it starts in, sshd's wrapper, ~/.bash_profile and the owner's keys
    (one helper for all of them: each helper costs a Python start-up while the session is being set up)."""
    os.makedirs(workspace, exist_ok=True)
    write_login_files(Path(home), Path(workspace), Path(venv) if venv else None, session_id, Path(wrapper), env)
    if authorized_keys is not None:  # sshd's StrictModes wants ~/.ssh 0700 and the file not writable by others
        write_files(channel, files=[{"path": os.path.join(home, ".ssh", "authorized_keys"),
                                     "content": authorized_keys.encode(), "mode": 0o600, "parent_mode": 0o700}])
