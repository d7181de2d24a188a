"""Workspace snapshots through a real server: upload, list, download, resume, access control, concurrent
restores, a crash mid-sync, deduplication across sessions (and its trust rules), retention and GC."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from berth.client import BerthClient
from berth.errors import WorkspaceError
from berth.workspace.api import WorkspaceApi
from berth.workspace.format import RAW, build_pack, chunk_id
from berth.workspace.sync import restore_from_server, restore_snapshot, snapshot_to_server
from treeutil import tree_state

ROOT = Path(__file__).resolve().parents[2]


def make_tree(root: Path, random_mb: float = 0.2) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(30):
        (root / "src" / "pkg" / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n" * 20)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "data.bin").write_bytes(os.urandom(int(random_mb * 2**20)))
    os.symlink("src/pkg/m1.py", root / "link")
    os.utime(root / "run.sh", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


@pytest.fixture(scope="module")
def worker(server_only):
    """A fake worker (registered through the real API) that claims sessions, so tests hold session tokens."""
    s = server_only
    w = s.api("POST", "/api/v1/workers/register", token=s.agent_token, json={
        "name": "ws-fake", "hostname": "ws-fake", "queues": ["default"], "cpus": 2, "memory_bytes": 1, "run_as": "root",
        "is_root": True})
    stop = threading.Event()

    def beat():
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {w['token']}"}) as http:
            while not stop.is_set():
                try:
                    http.post(f"/api/v1/workers/{w['worker_id']}/heartbeat")
                except httpx.HTTPError:
                    pass
                stop.wait(1)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield w
    stop.set()
    thread.join(5)


def claim(stack, worker, token: str | None = None, **config) -> tuple[str, str]:
    view = stack.api("POST", "/api/v1/sessions", token=token, json={"app": "ssh-session", "config": config})
    assignment = stack.api("POST", f"/api/v1/workers/{worker['worker_id']}/claim", token=worker["token"])
    assert assignment["session_id"] == view["id"]
    return view["id"], assignment["session_token"]


def user_token(stack, name: str, project: str | None = None, role: str = "viewer") -> str:
    stack.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    if project:
        stack.api("PUT", f"/api/v1/projects/{project}/members", json={"username": name, "role": role})
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": name, "password": f"{name}-password"})
    return r.json()["token"]


async def sync(stack, session_id: str, token: str, root: Path, state: Path, **kw):
    async with BerthClient(stack.url, token) as client:
        return await snapshot_to_server(client, session_id, root, state_dir=state, emit=kw.pop("emit", lambda line: None), **kw)


async def test_sync_list_download_and_restore(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    src = make_tree(tmp_path / "src")
    lines: list[str] = []
    info = await sync(server_only, sid, tok, src, tmp_path / "state", emit=lines.append)
    assert info.session_id == sid and info.files == 32 and info.bytes_total == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert info.bytes_new > 0 and any(line.startswith(f"workspace: snapshot {info.id}") for line in lines)

    listed = server_only.cli_json("workspaces", "list", "--session", sid)
    assert [s["id"] for s in listed] == [info.id] and listed[0]["files"] == 32
    human = server_only.cli("workspaces", "list").stdout
    assert info.id in human and sid in human

    server_only.cli("workspaces", "download", info.id, str(tmp_path / "cli"))
    assert tree_state(tmp_path / "cli") == tree_state(src)
    assert server_only.cli("workspaces", "download", info.id, str(tmp_path / "cli"), check=False).returncode == 1  # not empty

    async with BerthClient(server_only.url, tok) as client:
        restored = await restore_from_server(client, sid, tmp_path / "api", emit=lambda line: None)
    assert restored.id == info.id and tree_state(tmp_path / "api") == tree_state(src)

    again = await sync(server_only, sid, tok, src, tmp_path / "state")
    assert again.bytes_sent == 0 and again.bytes_new == 0
    assert server_only.api("GET", f"/api/v1/workspaces/snapshots/{again.id}")["parent_id"] == info.id


async def test_no_snapshot_yet_is_none(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    async with BerthClient(server_only.url, tok) as client:
        assert await restore_from_server(client, sid, tmp_path / "dest", emit=lambda line: None) is None


async def test_interrupted_upload_resumes_without_resending(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"part{i}.bin").write_bytes(os.urandom(8 << 20))  # 48 MiB: three packs
    total = 48 << 20
    stored_before = []

    def abort(sent: int, packs: int) -> None:
        stored_before.append(sent)
        raise RuntimeError("network cable pulled")

    with pytest.raises(WorkspaceError, match="network cable pulled"):
        await sync(server_only, sid, tok, src, tmp_path / "state", progress=abort)
    assert server_only.api("GET", "/api/v1/workspaces/snapshots", params={"session": sid}) == []  # nothing committed
    info = await sync(server_only, sid, tok, src, tmp_path / "state")
    assert stored_before[0] >= 16 << 20
    assert info.bytes_sent + stored_before[0] <= total + 4096  # what arrived before the abort was not sent again
    assert info.bytes_new >= total  # ... yet the snapshot counts everything it added to the store
    async with BerthClient(server_only.url, tok) as client:
        await restore_from_server(client, sid, tmp_path / "dest", emit=lambda line: None)
        pack = build_pack([(chunk_id(b"x"), RAW, b"x", 1)])
        api = WorkspaceApi(client)
        first, second = await asyncio.to_thread(api.put_pack, sid, pack), await asyncio.to_thread(api.put_pack, sid, pack)
        api.close()
    assert tree_state(tmp_path / "dest") == tree_state(src)
    assert first.created and not second.created  # packs are idempotent


async def test_users_of_other_projects_and_other_sessions_are_refused(server_only, worker, tmp_path):
    s = server_only
    sid, tok = claim(s, worker, project="ws-private")
    info = await sync(s, sid, tok, make_tree(tmp_path / "src"), tmp_path / "state")
    mallory = user_token(s, "wsmallory")
    carol = user_token(s, "wscarol", "ws-private", "viewer")
    s.api("POST", "/api/v1/projects", token=mallory, json={"name": "ws-mallory"})  # an outsider with a project of her own
    h = {"Authorization": f"Bearer {mallory}"}
    for method, path, body, real in [("GET", "/api/v1/workspaces/snapshots?session={}", None, sid),
                                     ("GET", "/api/v1/workspaces/sessions/{}/state", None, sid),
                                     ("GET", "/api/v1/workspaces/snapshots/{}", None, info.id),
                                     ("GET", "/api/v1/workspaces/snapshots/{}/manifest", None, info.id),
                                     ("GET", "/api/v1/workspaces/snapshots/{}/locations", None, info.id),
                                     ("POST", "/api/v1/workspaces/snapshots/{}/read", {"pack": "1", "ranges": [[0, 1]]}, info.id)]:
        # the same answer as for one that does not exist: whether it exists does not leak
        missing_id = "0" * len(real)
        r = httpx.request(method, s.url + path.format(real), headers=h, json=body)
        missing = httpx.request(method, s.url + path.format(missing_id), headers=h, json=body)
        assert r.status_code == missing.status_code == 404, (path, r.text)
        assert r.json()["detail"] == missing.json()["detail"].replace(missing_id, real)
    assert info.id not in [x["id"] for x in s.api("GET", "/api/v1/workspaces/snapshots", token=mallory)]
    env = s.env(BERTH_SERVER=s.url, BERTH_TOKEN=mallory, HOME=str(tmp_path / "home-m"))
    result = s.cli("workspaces", "download", info.id, str(tmp_path / "stolen"), env=env, check=False)
    assert result.returncode == 1 and f"no snapshot '{info.id}'" in result.stderr and "ws-private" not in result.stderr
    # a viewer of the project may
    env = s.env(BERTH_SERVER=s.url, BERTH_TOKEN=carol, HOME=str(tmp_path / "home-c"))
    s.cli("workspaces", "download", info.id, str(tmp_path / "viewer"), env=env)
    assert tree_state(tmp_path / "viewer") == tree_state(tmp_path / "src")
    # another session's supervisor may neither read nor write this session's workspace
    other, other_tok = claim(s, worker, project="ws-private")
    h = {"Authorization": f"Bearer {other_tok}"}
    assert httpx.get(f"{s.url}/api/v1/workspaces/snapshots?session={sid}", headers=h).status_code == 404
    assert httpx.get(f"{s.url}/api/v1/workspaces/snapshots/{info.id}/manifest", headers=h).status_code == 404
    assert httpx.post(f"{s.url}/api/v1/workspaces/sessions/{sid}/missing", headers=h, json={"ids": []}).status_code == 403
    assert httpx.put(f"{s.url}/api/v1/workspaces/sessions/{sid}/packs/{'0' * 64}", headers=h, content=b"x").status_code == 403
    # users cannot upload at all, and a finished session no longer can
    assert httpx.post(f"{s.url}/api/v1/workspaces/sessions/{sid}/missing", headers={"Authorization": f"Bearer {s.token}"},
                      json={"ids": []}).status_code == 403
    s.api("POST", f"/api/v1/sessions/{other}/supervisor/status", token=other_tok, json={"status": "stopped"})
    with pytest.raises(WorkspaceError, match="stopped"):
        await sync(s, other, other_tok, tmp_path / "src", tmp_path / "state-other")


async def test_two_restores_of_one_snapshot_at_once(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    src = make_tree(tmp_path / "src", random_mb=20)
    await sync(server_only, sid, tok, src, tmp_path / "state")
    async with BerthClient(server_only.url, tok) as client:
        a, b = await asyncio.gather(restore_from_server(client, sid, tmp_path / "a", emit=lambda line: None),
                                    restore_from_server(client, sid, tmp_path / "b", emit=lambda line: None))
    assert a.id == b.id
    assert tree_state(tmp_path / "a") == tree_state(src) == tree_state(tmp_path / "b")


CHILD = """
import asyncio, sys, time
from pathlib import Path
from berth.client import BerthClient
from berth.workspace.sync import snapshot_to_server

def stored(sent, packs):
    print("PACK", sent, flush=True)
    time.sleep(120)  # killed here, between two packs

async def main():
    async with BerthClient(sys.argv[1], sys.argv[2]) as c:
        await snapshot_to_server(c, sys.argv[3], Path(sys.argv[4]), state_dir=Path(sys.argv[5]), emit=lambda l: None, progress=stored)

asyncio.run(main())
"""


async def test_kill_9_mid_sync_keeps_the_previous_snapshot(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    src = make_tree(tmp_path / "src")
    first = await sync(server_only, sid, tok, src, tmp_path / "state")
    before = tree_state(src)
    for i in range(6):
        (src / f"new{i}.bin").write_bytes(os.urandom(8 << 20))
    child = subprocess.Popen([sys.executable, "-c", CHILD, server_only.url, tok, sid, str(src), str(tmp_path / "state")],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.startswith("PACK"), line
        stored_before = int(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    listed = server_only.api("GET", "/api/v1/workspaces/snapshots", params={"session": sid})
    assert [x["id"] for x in listed] == [first.id]
    async with BerthClient(server_only.url, tok) as client:
        await restore_from_server(client, sid, tmp_path / "old", emit=lambda line: None)
    assert tree_state(tmp_path / "old") == before
    after = await sync(server_only, sid, tok, src, tmp_path / "state")
    assert after.bytes_sent + stored_before <= (48 << 20) + 4096  # what the killed sync stored is not sent again
    async with BerthClient(server_only.url, tok) as client:
        await restore_from_server(client, sid, tmp_path / "new", emit=lambda line: None)
    assert tree_state(tmp_path / "new") == tree_state(src)


async def test_restored_session_reads_its_source_and_syncs_incrementally(server_only, worker, tmp_path):
    s = server_only
    source, source_tok = claim(s, worker)
    await sync(s, source, source_tok, make_tree(tmp_path / "src"), tmp_path / "state-src")
    target, target_tok = claim(s, worker, restore_session=source)
    lines: list[str] = []
    async with BerthClient(s.url, target_tok) as client:
        info = await restore_from_server(client, source, tmp_path / "ws", emit=lines.append, state_dir=tmp_path / "state")
    assert info is not None and info.session_id == source and lines[0].startswith(f"workspace: restored snapshot {info.id}")
    assert tree_state(tmp_path / "ws") == tree_state(tmp_path / "src")
    lines.clear()
    first = await sync(s, target, target_tok, tmp_path / "ws", tmp_path / "state", emit=lines.append)
    assert first.bytes_sent == 0 and "read 0 files" in lines[-1]  # incremental against the restored snapshot
    assert s.api("GET", f"/api/v1/workspaces/snapshots/{first.id}")["parent_id"] == info.id


async def test_identical_content_across_sessions_is_stored_once_and_cannot_be_poisoned(server_only, worker, tmp_path):
    s = server_only
    a, a_tok = claim(s, worker, project="ws-dedupe")
    b, b_tok = claim(s, worker, project="ws-dedupe")
    src = make_tree(tmp_path / "src", random_mb=3)
    await sync(s, a, a_tok, src, tmp_path / "state-a")
    second = await sync(s, b, b_tok, src, tmp_path / "state-b")
    assert second.bytes_sent == 0 and second.bytes_new == 0  # B's chunks were A's (verified by the server first)

    # Mallory's session plants wrong bytes under the id of content Victor will have; Victor's sync is not fooled.
    m, m_tok = claim(s, worker, project="ws-dedupe")
    v, v_tok = claim(s, worker, project="ws-dedupe")
    secret = os.urandom(100_000)
    async with BerthClient(s.url, m_tok) as client:
        api = WorkspaceApi(client)
        await asyncio.to_thread(api.put_pack, m, build_pack([(chunk_id(secret), RAW, os.urandom(100_000), 100_000)]))
        api.close()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.bin").write_bytes(secret)
    info = await sync(s, v, v_tok, victim, tmp_path / "state-v")
    assert info.bytes_sent >= 100_000
    async with BerthClient(s.url, v_tok) as client:
        await restore_from_server(client, v, tmp_path / "back", emit=lambda line: None)
    assert (tmp_path / "back" / "secret.bin").read_bytes() == secret


async def test_retention_keeps_the_last_snapshots_and_gc_only_what_nothing_references(server_only, worker, tmp_path):
    s = server_only
    sid, tok = claim(s, worker, project="ws-retention")
    src = make_tree(tmp_path / "src")
    taken = []
    for i in range(7):
        (src / "current.bin").write_bytes(os.urandom(300_000))  # each version replaces the last
        info = await sync(s, sid, tok, src, tmp_path / "state")
        taken.append((info.id, tree_state(src)))
    listed = [x["id"] for x in s.api("GET", "/api/v1/workspaces/snapshots", params={"session": sid})]
    assert listed == [t[0] for t in reversed(taken[2:])]  # the default keeps 5
    assert httpx.get(f"{s.url}/api/v1/workspaces/snapshots/{taken[0][0]}", headers={"Authorization": f"Bearer {s.token}"}).status_code == 404
    assert s.api("POST", "/api/v1/workspaces/gc")["packs_deleted"] == 0  # everything is younger than the grace period
    report = s.api("POST", "/api/v1/workspaces/gc", params={"grace_s": 0})
    assert report["packs_deleted"] >= 1 and report["bytes_freed"] > 0
    async with BerthClient(s.url, tok) as client:
        for snapshot_id, state in taken[2:]:
            dest = tmp_path / f"r-{snapshot_id}"
            await restore_snapshot(client, snapshot_id, dest, emit=lambda line: None)
            assert tree_state(dest) == state
    assert s.api("POST", "/api/v1/workspaces/gc", params={"grace_s": 0})["packs_deleted"] == 0
    mallory = user_token(s, "wsgc")
    assert httpx.post(f"{s.url}/api/v1/workspaces/gc", headers={"Authorization": f"Bearer {mallory}"}).status_code == 403


async def test_size_limit_and_special_files(server_only, worker, tmp_path):
    sid, tok = claim(server_only, worker)
    src = make_tree(tmp_path / "src")
    first = await sync(server_only, sid, tok, src, tmp_path / "state")
    (src / "huge.bin").write_bytes(os.urandom(2 << 20))
    with pytest.raises(WorkspaceError, match="limit"):
        await sync(server_only, sid, tok, src, tmp_path / "state", max_bytes=1 << 20)
    assert [x["id"] for x in server_only.api("GET", "/api/v1/workspaces/snapshots", params={"session": sid})] == [first.id]
    os.mkfifo(src / "fifo")
    lines: list[str] = []
    await sync(server_only, sid, tok, src, tmp_path / "state", emit=lines.append)
    assert "workspace: skipped fifo fifo" in lines


def test_routes_document_their_errors(server_only):
    spec = httpx.get(server_only.url + "/openapi.json").json()
    for path, methods in spec["paths"].items():
        if path.startswith("/api/v1/workspaces"):
            for method, op in methods.items():
                codes = {int(c) for c in op["responses"] if c.isdigit()}
                assert {401, 403} <= codes, (method, path, codes)
