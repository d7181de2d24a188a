"""The session backend plugin interface.

A backend decides where a session's processes run and who they run as.

Required methods:
    ``prepare()``   create the session's identity and home (a system user, a container...); return a ``SessionHost``
    ``teardown()``  end every process of the session and remove what ``prepare`` made, except the home/workspace
    ``identity()``  the uid/gid, as seen on the worker, that work done on the session's behalf runs as
    ``clean_up_orphan()``  (classmethod) end what a dead supervisor left, given only the session id and its dir

Optional:
    ``describe()``        one console line saying what isolation the session gets
    ``act_as_session()``  run a file task (``berth.agent.as_session.helper.TASKS``) as ``identity()``: restore, snapshot,
                          login files, helpers in the home. Never do such work as root on paths the user controls.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.agent.as_session import Identity, run_task
from berth.agent.environment import RunAs


@dataclass
class SessionHost:
    run_as: RunAs           # who the session's processes run as
    home: Path              # the session's HOME
    system_user: bool       # a per-session system user was created (root agents)


class SessionBackend(abc.ABC):
    name: str = "abstract"

    def __init__(self, session_id: str, session_dir: Path, *, homes_dir: Path, password: str):
        self.session_id = session_id
        self.session_dir = session_dir
        self.homes_dir = homes_dir
        self.password = password
        self.host: SessionHost | None = None  # set by prepare()

    @abc.abstractmethod
    async def prepare(self) -> SessionHost: ...

    @abc.abstractmethod
    async def teardown(self, host: SessionHost | None, *, exclude_pids: set[int]) -> int:
        """Return how many leftover processes had to be killed."""

    @abc.abstractmethod
    def identity(self) -> Identity:
        """Who file work on the session's behalf runs as (after prepare)."""

    @classmethod
    @abc.abstractmethod
    async def clean_up_orphan(cls, session_id: str, session_dir: Path, *, runtime_dir: Path) -> int:
        """After a supervisor died: end the session's processes and remove what prepare() made (the agent
        calls this, then reports the session failed). Returns how many processes were killed."""

    async def act_as_session(self, task: str, args: dict[str, Any], **kw: Any) -> Any:
        """Run `task` with the session's identity; see ``berth.agent.as_session.run_task`` for `kw`."""
        return await run_task(self.identity(), task, args, **kw)

    def describe(self) -> str:
        return f"{self.name} backend"
