"""A workspace snapshot downloaded as a tar, from the dashboard's Download link and from the API
(`GET /api/v1/workspaces/snapshots/{id}/tar`), against a real server and agent (SQLite and PostgreSQL): the
tar holds what the session wrote (setuid dropped, symlinks as links), and the API's read rule applies (project
viewers may download; an outsider, or another session's URL, gets the answer a missing snapshot gets)."""

from __future__ import annotations

import io
import tarfile
import time

import httpx
import pytest
from webclient import web_login

BIG = b"abcdefgh\n" * 700_000  # 6.3 MB: two chunks
INIT = ("mkdir -p sub empty && printf hello > a.txt && chmod 4755 a.txt && touch -d @1600000000 a.txt"
        " && yes abcdefgh | head -c 6300000 > sub/big.bin && ln -s a.txt link")


@pytest.fixture(scope="module")
def world(stack):
    s = stack
    for name in ("dana", "vic", "oscar"):
        s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
    tokens = {name: s.api("POST", "/api/v1/auth/login", json={"username": name, "password": f"{name}-password"})["token"]
              for name in ("dana", "vic", "oscar")}
    s.api("POST", "/api/v1/projects", token=tokens["dana"], json={"name": "dls"})
    s.api("PUT", "/api/v1/projects/dls/members", token=tokens["dana"], json={"username": "vic", "role": "viewer"})
    config = {"project": "dls", "name": "my work ü", "workspace": "~/ws", "init_script": INIT}
    view = s.api("POST", "/api/v1/sessions", token=tokens["dana"], json={"app": "ssh-session", "config": config})
    s.wait_status(view["id"], "active", "idle", timeout=120)
    s.api("POST", f"/api/v1/sessions/{view['id']}/sync", token=tokens["dana"])
    deadline = time.monotonic() + 90
    snaps = []
    while not snaps and time.monotonic() < deadline:
        snaps = s.api("GET", "/api/v1/workspaces/snapshots", token=tokens["dana"], params={"session": view["id"]})
        time.sleep(0.3)
    assert snaps, s.events(view["id"])
    other = s.api("POST", "/api/v1/sessions", token=tokens["dana"], json={"app": "ssh-session", "config": {"project": "dls"}})
    s.api("POST", f"/api/v1/sessions/{other['id']}/stop", token=tokens["dana"])
    clients = {name: web_login(s.url, name, f"{name}-password")[0] for name in tokens}
    yield {"session": view["id"], "snap": snaps[0]["id"], "other": other["id"], "tokens": tokens, **clients}
    for client in clients.values():
        client.close()


def members(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_the_owner_downloads_from_the_dashboard(world):
    session, snap = world["session"], world["snap"]
    page = world["dana"].get(f"/sessions/{session}")
    assert f'href="/sessions/{session}/snapshots/{snap}/download"' in page.text
    r = world["dana"].get(f"/sessions/{session}/snapshots/{snap}/download")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    top = f"my_work-{snap}"
    assert r.headers["content-disposition"] == (f'attachment; filename="{top}.tar"; '
                                                f"filename*=UTF-8''{top}.tar")
    got = members(r.content)
    assert {"a.txt", "link", "empty", "sub", "sub/big.bin"} <= {n.removeprefix(top + "/") for n in got}
    info, data = got[f"{top}/a.txt"]
    assert data == b"hello" and info.mode == 0o755 and info.mtime == 1600000000  # setuid dropped, mtime kept
    assert got[f"{top}/sub/big.bin"][1] == BIG
    link = got[f"{top}/link"][0]
    assert link.issym() and link.linkname == "a.txt"
    assert got[f"{top}/empty"][0].isdir() and got[top][0].isdir()
    assert all(name == top or name.startswith(top + "/") for name in got)


def test_the_api_streams_the_same_tar_and_viewers_may_download(world, stack):
    session, snap = world["session"], world["snap"]
    page = world["dana"].get(f"/sessions/{session}/snapshots/{snap}/download").content
    for who in ("dana", "vic"):
        r = httpx.get(f"{stack.url}/api/v1/workspaces/snapshots/{snap}/tar", timeout=60,
                      headers={"Authorization": f"Bearer {world['tokens'][who]}"})
        assert r.status_code == 200 and r.content == page, (who, r.status_code)
    viewer = world["vic"].get(f"/sessions/{session}/snapshots/{snap}/download")
    assert viewer.status_code == 200 and viewer.content == page
    assert httpx.get(f"{stack.url}/api/v1/workspaces/snapshots/{snap}/tar", timeout=60).status_code == 401


def test_outsiders_and_wrong_urls_get_the_missing_snapshot_answer(world, stack):
    session, snap, other = world["session"], world["snap"], world["other"]
    missing = "nosuchsnapshot1"

    def api(who: str, snapshot_id: str) -> httpx.Response:
        return httpx.get(f"{stack.url}/api/v1/workspaces/snapshots/{snapshot_id}/tar", timeout=60,
                         headers={"Authorization": f"Bearer {world['tokens'][who]}"})

    outsider, absent = api("oscar", snap), api("oscar", missing)
    assert outsider.status_code == absent.status_code == 404
    assert outsider.json()["detail"] == f"no snapshot {snap!r}" and absent.json()["detail"] == f"no snapshot {missing!r}"
    for who, url in (("oscar", f"/sessions/{session}/snapshots/{snap}/download"),
                     ("dana", f"/sessions/{other}/snapshots/{snap}/download"),  # another session's snapshot
                     ("dana", f"/sessions/{session}/snapshots/{missing}/download")):
        r = world[who].get(url)
        assert r.status_code == 404 and "no snapshot" in r.text and "x-tar" not in r.headers["content-type"], (who, url)
    anonymous = httpx.get(f"{stack.url}/sessions/{session}/snapshots/{snap}/download", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
