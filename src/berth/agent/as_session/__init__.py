"""Acting as the session: file work done on a session's behalf runs in a helper with the session's identity.

The supervisor is root (when the agent is); the session's home, workspace and venv are the session
user's to change. Anything the supervisor does there (restore, snapshot, login files, helpers) runs in
``helper.py`` as the session user, never as root following paths the user controls. Backends give the
identity (``SessionBackend.identity``) and run tasks through ``SessionBackend.act_as_session``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Identity", "run_task"]


def __getattr__(name: str) -> Any:  # lazy: the helper imports this package and must start fast
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
