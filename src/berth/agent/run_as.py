"""Who a session's work runs as on the worker: a user, its ids and its home."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunAs:
    user: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def current(cls, home: Path) -> RunAs:
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:  # containers running under an arbitrary uid have no passwd entry
            user = str(uid)
        return cls(user, uid, os.getgid(), Path(home))

    @property
    def is_other(self) -> bool:  # acting for this user means switching to it (we are root, it is not us)
        return self.uid != os.geteuid()
