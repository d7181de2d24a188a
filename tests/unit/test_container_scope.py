"""A container's processes are the session's by their host id range (proctable.Scope.uid_ranges)."""

from __future__ import annotations

import os
import subprocess

from berth.agent.proctable import ProcessTable, Scope


def test_a_process_whose_uid_lies_in_the_range_belongs():
    child = subprocess.Popen(["sleep", "30"])
    try:
        uid = os.getuid()
        members, _ = ProcessTable(Scope(uid_ranges=(range(uid, uid + 1),))).scan()
        assert child.pid in members
        members, _ = ProcessTable(Scope(uid_ranges=(range(uid + 1, uid + 65537),))).scan()
        assert child.pid not in members
    finally:
        child.kill()
        child.wait()
