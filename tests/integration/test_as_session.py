"""The as_session helper: work done on a session's behalf runs with the session user's rights, not root's."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from berth.agent import session_users
from berth.agent.as_session import Identity, run_task
from berth.agent.as_session import protocol
from berth.agent.sync import SessionEngine
from berth.errors import SetupFailed, WorkspaceError
from berth.workspace.format import LocationTableBuilder
from berth.workspace.local import LocalStore
from berth.workspace.sync import IN_PROCESS

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="creating a system user needs root")]


@pytest.fixture
def session_user():
    base = Path(f"/var/tmp/berth-as-session-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    name = f"berth-t{uuid.uuid4().hex[:10]}"
    run_as = asyncio.run(session_users.create_session_user(name, base / "home", "pw-" + uuid.uuid4().hex))
    yield run_as
    asyncio.run(session_users.remove_session_user(name))
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def victim(tmp_path):
    base = Path(f"/var/tmp/berth-victim-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    (base / "secret.txt").write_text("root-only\n")
    os.chmod(base / "secret.txt", 0o600)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def snapshot_of(tmp_path: Path, files: dict[str, bytes]) -> tuple[bytes, bytes, LocalStore]:
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, emit=lambda line: None, excludes=[])
    table = LocationTableBuilder(None, set())
    for cid, loc in store.index.items():
        table.add(bytes.fromhex(cid), loc)
    return (store.snapshots_dir / f"{sid}.manifest").read_bytes(), table.encode(), store


async def test_restore_through_a_planted_link_is_refused_as_the_user_and_was_not_as_root(session_user, victim, tmp_path):
    manifest, table, store = snapshot_of(tmp_path, {"secret.txt": b"mallory\n"})
    link = session_user.home / "ws"
    subprocess.run(["ln", "-s", str(victim), str(link)], user=session_user.uid, group=session_user.gid, check=True)
    engine = SessionEngine(functools.partial(run_task, Identity(session_user.uid, session_user.gid)))
    with pytest.raises(WorkspaceError, match="Permission denied|not permitted"):
        await engine.restore(manifest, table, store.read, link, progress=None, want_inodes=False)
    assert (victim / "secret.txt").read_text() == "root-only\n"
    assert stat.S_IMODE(os.stat(victim / "secret.txt").st_mode) == 0o600
    # The same restore done as root (what the supervisor used to do) overwrites the victim.
    await IN_PROCESS.restore(manifest, table, store.read, link, progress=None, want_inodes=False)
    assert (victim / "secret.txt").read_text() == "mallory\n"


async def test_snapshot_as_the_user_cannot_read_root_files(session_user, victim):
    class Sink:
        def put_pack(self, pack):
            self.packs = getattr(self, "packs", []) + [pack]

        def flush(self):
            pass

    lines: list[str] = []
    engine = SessionEngine(functools.partial(run_task, Identity(session_user.uid, session_user.gid)))
    result = await engine.snapshot(victim, Sink(), parent=None, excludes=[], max_bytes=None, emit=lines.append)
    assert result.files == 0 and result.skipped == ["secret.txt"]
    assert any("skipped secret.txt" in line and "Permission denied" in line for line in lines)


async def test_file_tasks_run_as_the_user_and_replace_links(session_user, victim):
    act = functools.partial(run_task, Identity(session_user.uid, session_user.gid))
    with pytest.raises(SetupFailed, match="Permission denied"):
        await act("write_files", {"files": [{"path": str(victim / "secret.txt"), "content": b"x", "mode": 0o644}]})
    with pytest.raises(SetupFailed, match="Permission denied"):
        await act("make_dirs", {"paths": [str(victim / "new")]})
    planted = session_user.home / "helper"
    subprocess.run(["ln", "-s", str(victim / "secret.txt"), str(planted)], user=session_user.uid, check=True)
    await act("write_files", {"files": [{"path": str(planted), "content": b"#!/bin/sh\n", "mode": 0o755}]})
    assert not planted.is_symlink() and os.stat(planted).st_uid == session_user.uid
    assert (victim / "secret.txt").read_text() == "root-only\n"


async def test_helper_is_not_traceable_and_has_no_groups(session_user):
    """The helper works for a root process: the session user may signal it but not read its memory."""
    seen: dict[str, str] = {}

    def started(pid: int) -> None:
        seen["pid"] = str(pid)

    act = functools.partial(run_task, Identity(session_user.uid, session_user.gid), on_start=started)
    # A task that waits for our reply gives time to look at it: a restore asking to read a pack.
    manifest_dir = session_user.home / "probe"

    async def read(pack, ranges):
        status = Path(f"/proc/{seen['pid']}/status").read_text()
        seen["status"] = status
        probe = subprocess.run(["cat", f"/proc/{seen['pid']}/environ"], user=session_user.uid, group=session_user.gid,
                               capture_output=True)
        seen["environ_rc"] = str(probe.returncode)
        raise WorkspaceError("stop here")

    manifest, table, _ = snapshot_of(manifest_dir.parent.parent / f"snap-{uuid.uuid4().hex[:6]}", {"a": b"x"})
    with pytest.raises(WorkspaceError, match="stop here"):
        await act("restore", {"manifest": manifest, "locations": table, "dest": str(manifest_dir), "want_inodes": False},
                  handlers={"read": read}, error=WorkspaceError)
    fields = dict(line.split(":", 1) for line in seen["status"].splitlines())
    assert fields["Uid"].split() == [str(session_user.uid)] * 4 and fields["Groups"].strip() == ""
    assert seen["environ_rc"] != "0"  # not dumpable: another process of the same user cannot read it


async def test_a_helper_that_breaks_the_protocol_is_an_error_not_a_crash(tmp_path):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\xff' * 16)",
                                                stdout=asyncio.subprocess.PIPE)
    with pytest.raises(protocol.ProtocolError):
        await protocol.read_frame(proc.stdout.readexactly)
    await proc.wait()
    frame = b"".join(bytes(p) for p in protocol.encode({"t": "call", "data": b"\0" * 10, "nested": [b"a", {"b": b"c"}]}))
    reader = asyncio.StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    assert await protocol.read_frame(reader.readexactly) == {"t": "call", "data": b"\0" * 10, "nested": [b"a", {"b": b"c"}]}
