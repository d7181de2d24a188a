"""The snapshot engine against a real local store: round trips, incremental reads, dedupe, corruption,
unsafe manifests, special files, excludes, size limit, memory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.errors import WorkspaceError
from berth.workspace import manifest as mf
from berth.workspace.excludes import DEFAULT_EXCLUDES, Excludes
from berth.workspace.local import LocalStore
from berth.workspace.snapshot import ParentCache
from treeutil import tree_state

SMALL = {"chunk_size": 1024, "pack_size": 4096}  # many chunks and packs from small trees


# --- helpers ---------------------------------------------------------------------------------------

def rmtree(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def age(root: Path) -> None:
    """Files written just now are 'racy' (re-read next time); wait out the window once."""
    time.sleep(2.1)


# --- round trips -----------------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=10).filter(
    lambda n: n not in (".", "..") and len(n.encode()) <= 80)
mtimes = st.integers(min_value=10**9, max_value=4 * 10**18)
files = st.tuples(st.just("f"), st.one_of(st.binary(max_size=200), st.binary(min_size=1000, max_size=5000)),
                  st.sampled_from([0o644, 0o755, 0o600, 0o700, 0o444, 0o4755]), mtimes)
links = st.tuples(st.just("l"), st.sampled_from(["/etc/passwd", "../outside", "sibling", "a/b/c", "dangling-target"]))
trees = st.recursive(st.one_of(files, links),
                     lambda kids: st.tuples(st.just("d"), st.dictionaries(names, kids, max_size=5),
                                            st.sampled_from([0o755, 0o700, 0o555, 0o750]), mtimes),
                     max_leaves=25)


def build(root: Path, node: tuple) -> None:
    for name, child in node[1].items():
        p = root / name
        if child[0] == "f":
            p.write_bytes(child[1])
            os.chmod(p, child[2])
            os.utime(p, ns=(child[3], child[3]))
        elif child[0] == "l":
            os.symlink(child[1], p)
        else:
            p.mkdir()
            build(p, child)
            os.chmod(p, child[2])
            os.utime(p, ns=(child[3], child[3]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.just("d"), st.dictionaries(names, trees, max_size=6), st.just(0o755), mtimes))
def test_round_trip_keeps_everything(tree):
    with tempfile.TemporaryDirectory() as tmp:
        src, dest, store_dir = Path(tmp) / "src", Path(tmp) / "dest", Path(tmp) / "store"
        src.mkdir()
        build(src, tree)
        try:
            store = LocalStore(store_dir)
            sid, result = store.snapshot(src, emit=lambda line: None, excludes=[], **SMALL)
            restored = store.restore(sid, dest)
            expected = tree_state(src)
            set_id = sorted(path for path, state in expected.items() if state[0] != "l" and state[1] & 0o6000)
            # setuid/setgid bits are never restored (issue #7): everything else is kept exactly
            expected = {path: (s[0], s[1] & ~0o6000, *s[2:]) if s[0] != "l" else s for path, s in expected.items()}
            assert tree_state(dest) == expected
            assert sorted(restored.dropped_bits) == set_id
            assert restored.files == result.files
        finally:
            rmtree(Path(tmp))


def test_round_trip_unicode_empty_dirs_symlinks_exec_bits(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"ünï/cödé ✓.py": b"print('hi')\n", "big/model.bin": os.urandom(10_000), "empty.txt": b""})
    (src / "empty-dir" / "nested-empty").mkdir(parents=True)
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("ünï/cödé ✓.py", src / "inside-link")
    os.symlink("/etc/hostname", src / "outside-link")
    os.symlink("../../../etc", src / "escaping-link")
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, emit=lambda line: None, **SMALL)
    store.restore(sid, tmp_path / "dest")
    assert tree_state(tmp_path / "dest") == tree_state(src)
    assert os.readlink(tmp_path / "dest" / "escaping-link") == "../../../etc"  # stored, never followed


def test_restore_chowns_everything(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    src = tmp_path / "src"
    write_tree(src, {"a/b.txt": b"x", "c.txt": b"y"})
    os.symlink("c.txt", src / "link")
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    store.restore(sid, tmp_path / "dest", uid=4321, gid=4322)
    for p in [tmp_path / "dest", *(tmp_path / "dest").rglob("*")]:
        s = p.lstat()
        assert (s.st_uid, s.st_gid) == (4321, 4322), p


# --- incremental, dedupe ---------------------------------------------------------------------------

def test_incremental_reads_only_changed_files(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {f"d{i % 5}/f{i}.txt": f"file {i}\n".encode() * 50 for i in range(60)})
    write_tree(src, {"big.bin": os.urandom(5000)})
    age(src)
    store = LocalStore(tmp_path / "store")
    sid1, first = store.snapshot(src, **SMALL)
    assert first.files_read == 61
    sid2, second = store.snapshot(src, parent=first.cache, **SMALL)
    assert second.files_read == 0 and second.chunks_new == 0

    (src / "d1" / "f1.txt").write_bytes(b"changed, same size?\n")  # content
    (src / "d2" / "f2.txt").chmod(0o600)  # metadata only (ctime)
    os.utime(src / "d3" / "f3.txt", ns=(1, 10**9))  # mtime only
    with open(src / "big.bin", "r+b") as f:  # one chunk of a multi-chunk file
        f.seek(2048)
        f.write(b"X")
    (src / "new.txt").write_bytes(b"new")
    (src / "d4" / "f4.txt").unlink()
    sid3, third = store.snapshot(src, parent=second.cache, **SMALL)
    assert third.files_read == 5
    assert third.chunks_new == 3  # f1, the changed chunk of big.bin, new.txt
    store.restore(sid3, tmp_path / "dest")
    assert tree_state(tmp_path / "dest") == tree_state(src)
    store.restore(sid1, tmp_path / "old")  # the earlier snapshot is untouched
    assert (tmp_path / "old" / "d4" / "f4.txt").exists() and not (tmp_path / "old" / "new.txt").exists()


def test_side_cache_survives_a_restart(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {f"f{i}": b"x" * i for i in range(20)})
    age(src)
    store = LocalStore(tmp_path / "store")
    sid, first = store.snapshot(src, **SMALL)
    first.cache.snapshot_id = sid
    first.cache.save(tmp_path / "state")
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    loaded = ParentCache.load(tmp_path / "state")
    assert loaded is not None and loaded.snapshot_id == sid
    _, second = store.snapshot(src, parent=loaded, **SMALL)
    assert second.files_read == 0
    (tmp_path / "state" / "workspace-cache").write_bytes(b"garbage")
    assert ParentCache.load(tmp_path / "state") is None  # unreadable: the next snapshot just reads everything


def test_identical_content_is_stored_once(tmp_path):
    blob = os.urandom(3000)
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, {"x.bin": blob, "copy/x.bin": blob, "y.txt": b"hello"})
    write_tree(b, {"elsewhere/same.bin": blob, "hello.txt": b"hello"})
    store = LocalStore(tmp_path / "store")
    _, first = store.snapshot(a, **SMALL)
    assert first.chunks_new == 4  # x.bin's 3 chunks once (not twice), y.txt
    packs = sorted(p.name for p in store.packs.iterdir())
    _, second = store.snapshot(b, **SMALL)  # another "session" of the same project: nothing new to store
    assert second.bytes_read == 3005 and sorted(p.name for p in store.packs.iterdir()) == packs


# --- corruption and unsafe input -------------------------------------------------------------------

@pytest.mark.parametrize("content", [os.urandom(3000), b"compressible text\n" * 200])
def test_corrupt_chunk_fails_naming_the_file(tmp_path, content):
    src = tmp_path / "src"
    write_tree(src, {"data/model.ckpt": content})
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    for pack in store.packs.iterdir():
        data = bytearray(pack.read_bytes())
        data[-5] ^= 0xFF  # inside the last blob
        pack.write_bytes(bytes(data))
    with pytest.raises(WorkspaceError, match="data/model.ckpt.*corrupt"):
        LocalStore(tmp_path / "store").restore(sid, tmp_path / "dest")


def test_missing_pack_fails_naming_the_file(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"notes/readme.md": b"read me\n" * 10})
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    for pack in list(store.packs.iterdir()):
        pack.unlink()
    with pytest.raises(WorkspaceError, match="notes/readme.md"):
        store.restore(sid, tmp_path / "dest")  # the index still names the pack: reading it fails
    with pytest.raises(WorkspaceError, match="notes/readme.md.*missing"):
        LocalStore(tmp_path / "store").restore(sid, tmp_path / "dest2")  # reopened: the chunk is unknown


def evil(paths: list[str], kinds: str, targets: list[str] | None = None) -> bytes:
    n = len(paths)
    m = mf.Manifest(1024, paths, kinds, [0o644] * n, [10**9] * n, [0] * n, [0] * n, "", targets or [""] * kinds.count("l"))
    return mf.encode(m)


@pytest.mark.parametrize(("paths", "kinds", "why"), [
    (["../escape"], "f", "component"),
    (["/etc/passwd"], "f", "component"),
    (["a", "a/../../x"], "df", "component"),
    (["a//b"], "f", "component"),
    (["."], "d", "component"),
    ([""], "f", "component"),
    (["link", "link/x"], "lf", "parent is not a directory"),  # writing through a symlink restored earlier
    (["nodir/x"], "f", "parent is not a directory"),
    (["f", "f/x"], "ff", "parent is not a directory"),
    (["a", "a"], "dd", "twice"),
    (["bad\0name"], "f", "component"),
])
def test_unsafe_manifests_are_refused(tmp_path, paths, kinds, why):
    data = evil(paths, kinds, ["/tmp"] * kinds.count("l"))
    with pytest.raises(WorkspaceError, match=why):
        mf.decode(data)
    with pytest.raises(WorkspaceError):
        LocalStore(tmp_path / "store").commit(data)


def test_malformed_manifests_are_refused():
    good = json.loads(zstandard.ZstdDecompressor().decompress(evil(["a"], "f")))
    for change in ({"format": 2}, {"kinds": "x"}, {"modes": [0o17777]}, {"sizes": [5]}, {"chunks": "zz"},
                   {"nchunks": [1]}, {"paths": [7]}, {"targets": ["x"]}):
        doc = {**good, **change}
        with pytest.raises(WorkspaceError):
            mf.decode(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
    with pytest.raises(WorkspaceError):
        mf.decode(b"not zstd at all")


def test_restore_never_writes_through_an_existing_symlink(tmp_path):
    src, dest, outside = tmp_path / "src", tmp_path / "dest", tmp_path / "outside"
    write_tree(src, {"sub/file.txt": b"inside", "top.txt": b"top"})
    outside.mkdir()
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    dest.mkdir()
    os.symlink(outside, dest / "sub")  # a directory position taken by a symlink: refused
    with pytest.raises(WorkspaceError, match="sub"):
        store.restore(sid, dest)
    assert list(outside.iterdir()) == []
    os.unlink(dest / "sub")
    os.symlink(outside / "victim", dest / "top.txt")  # a file position taken by a symlink: replaced, not followed
    store.restore(sid, dest)
    assert (dest / "top.txt").read_bytes() == b"top" and not (dest / "top.txt").is_symlink()
    assert not (outside / "victim").exists()


# --- what is not stored ----------------------------------------------------------------------------

def test_special_files_are_skipped_with_a_note(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"keep.txt": b"kept"})
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "agent.sock"))
    notes: list[str] = []
    try:
        store = LocalStore(tmp_path / "store")
        sid, _ = store.snapshot(src, emit=notes.append, **SMALL)
    finally:
        sock.close()
    assert any("skipped fifo pipe" in n for n in notes) and any("skipped socket agent.sock" in n for n in notes)
    assert store.manifest(sid).paths == ["keep.txt"]


def test_default_and_custom_excludes(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"pkg/__pycache__/m.cpython-311.pyc": b"x", "pkg/m.py": b"x", "loose.pyc": b"x",
                     "home/.cache/pip/wheels/w.whl": b"x", "home/.cache/other/keep": b"x", "logs/a.log": b"x",
                     "logs/keep.log": b"x", "build/out.o": b"x", "src/build/keep.c": b"x"})
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    paths = set(store.manifest(sid).paths)
    assert "pkg/m.py" in paths and "home/.cache/other/keep" in paths
    assert not {"pkg/__pycache__", "loose.pyc", "home/.cache/pip"} & paths
    sid, _ = store.snapshot(src, excludes=[*DEFAULT_EXCLUDES, "*.log", "!keep.log", "/build/"], **SMALL)
    paths = set(store.manifest(sid).paths)
    assert "logs/keep.log" in paths and "logs/a.log" not in paths
    assert "build" not in paths and "src/build/keep.c" in paths
    sid, _ = store.snapshot(src, excludes=[], **SMALL)
    assert "pkg/__pycache__/m.cpython-311.pyc" in store.manifest(sid).paths


@pytest.mark.parametrize(("pattern", "path", "is_dir", "excluded"), [
    ("*.log", "a/b/x.log", False, True), ("/top", "top", True, True), ("/top", "a/top", True, False),
    ("docs/**/*.tmp", "docs/a/b/c.tmp", False, True), ("docs/**/*.tmp", "docs/c.tmp", False, True),
    ("**/cache/", "x/y/cache", True, True), ("**/cache/", "x/y/cache", False, False), ("a?c", "abc", False, True),
    ("[0-9]*.txt", "7days.txt", False, True), ("[!0-9]*.txt", "7days.txt", False, False), ("\\#hash", "#hash", False, True),
    ("dir/", "dir", False, False), ("logs/**", "logs/a/b", False, True),
])
def test_gitignore_patterns(pattern, path, is_dir, excluded):
    assert Excludes([pattern]).excluded(path, is_dir) is excluded


def test_size_limit_keeps_the_previous_snapshot(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": os.urandom(2000)})
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(src, **SMALL)
    write_tree(src, {"b.bin": os.urandom(5000)})
    packs = set(store.packs.iterdir())
    with pytest.raises(WorkspaceError, match="over the .* limit.*previous one is kept"):
        store.snapshot(src, max_bytes=4000, **SMALL)
    assert store.list() == [sid] and set(store.packs.iterdir()) == packs  # nothing was stored
    store.restore(sid, tmp_path / "dest")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["a.bin"]


def test_memory_stays_bounded(tmp_path):
    """A 300 MB file tree through the engine in a child process: peak RSS well under 200 MB."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    # VmHWM, not ru_maxrss: the latter keeps the pre-exec peak of the forked test runner.
    code = ("import re, sys; from pathlib import Path; from berth.workspace.local import LocalStore;"
            "LocalStore(Path(sys.argv[2])).snapshot(Path(sys.argv[1]), emit=lambda l: None);"
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "store")], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 200, out.stdout
