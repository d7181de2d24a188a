"""The tar stream of a snapshot (workspace/tarstream.py) against the real snapshot engine and a local store:
what tarfile extracts is the tree that was snapshotted (setuid/setgid dropped, as restore drops them),
symlinks stay links, mtimes are exact in the pax headers, memory stays bounded, broken stores fail clearly."""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from berth.errors import WorkspaceError
from berth.workspace.local import LocalStore
from berth.workspace.tarstream import WINDOW_BYTES, tar_stream
from treeutil import tree_state

SMALL = {"chunk_size": 1024, "pack_size": 4096}  # many chunks and packs from a small tree
T = 1_600_000_000 * 10**9  # whole seconds: tarfile's extraction sets mtimes through a float


def make_tree(root: Path) -> None:
    files = {"empty": b"", "one": b"x", "block": b"b" * 512, "text.txt": b"hello\n" * 100,
             "multi.bin": os.urandom(5000), "sub/deeper/zeros": bytes(3000), "sub/again.bin": os.urandom(1024),
             "ünïcödé name": b"u", "long/" + "n" * 120 + "/" + "f" * 150: b"long name"}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "emptydir").mkdir()
    (root / "ro").mkdir()
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../outside", root / "sub/up-link")
    os.symlink("sub", root / "dir-link")
    os.symlink("t" * 200, root / "long-target")
    os.chmod(root / "multi.bin", 0o755)
    os.chmod(root / "one", 0o4755)  # setuid: dropped
    os.chmod(root / "sub/again.bin", 0o2640)  # setgid: dropped
    os.chmod(root / "text.txt", 0o444)
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), key=lambda w: -w[0].count("/"))):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(T + i * 10**9, T + i * 10**9), follow_symlinks=False)
    os.chmod(root / "ro", 0o555)


def snapshot(tmp_path: Path, root: Path, **kwargs):
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(root, emit=lambda line: None, excludes=[], **{**SMALL, **kwargs})
    return store, store.manifest(sid)


def extract(blob: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        tar.extractall(dest)


def expected(state: dict) -> dict:
    """Setuid/setgid dropped; symlink mtimes left out (tarfile's extraction does not set them: checked in the headers)."""
    return {k: (v[0], v[1] & ~0o6000, *v[2:]) if v[0] != "l" else v[:2] for k, v in state.items()}


def links_without_mtime(state: dict) -> dict:
    return {k: v[:2] if v[0] == "l" else v for k, v in state.items()}


def test_the_tar_extracts_to_the_snapshotted_tree(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    store, manifest = snapshot(tmp_path, root)
    assert max(manifest.nchunks) > 3 and len({store.index[c].pack for c in manifest.chunk_ids()}) > 1
    blob = b"".join(tar_stream(manifest, store.index, store.read))
    assert len(blob) % tarfile.RECORDSIZE == 0
    extract(blob, tmp_path / "out")
    want = tree_state(root)
    got = links_without_mtime(tree_state(tmp_path / "out"))
    assert got == expected(want)
    assert got["one"][1] == 0o755 and got["sub/again.bin"][1] == 0o640
    assert os.readlink(tmp_path / "out" / "abs-link") == "/etc/passwd"  # a link, not the file it names
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = tar.getmembers()
        assert {m.uid for m in members} == {0} and {m.uname for m in members} == {""}
        assert {m.name: m.mtime * 10**9 for m in members if m.issym()} == {k: v[2] for k, v in want.items() if v[0] == "l"}
        names = [m.name for m in members]
        assert names.index("sub") < names.index("sub/deeper") < names.index("sub/deeper/zeros")  # parents first


def test_top_directory_and_exact_mtimes(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "f").write_bytes(b"data")
    os.utime(root / "f", ns=(T + 123456789, T + 123456789))
    (root / "old").write_bytes(b"")
    os.utime(root / "old", ns=(-1_500_000_000, -1_500_000_000))
    store, manifest = snapshot(tmp_path, root)
    blob = b"".join(tar_stream(manifest, store.index, store.read, top="work-abc"))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"work-abc", "work-abc/f", "work-abc/old"} and members["work-abc"].isdir()
    assert members["work-abc/f"].pax_headers["mtime"] == f"{T // 10**9}.123456789"
    assert members["work-abc/old"].pax_headers["mtime"] == "-1.5"
    for bad in ("..", "a/b", "."):
        with pytest.raises(WorkspaceError, match="not a directory name"):
            tar_stream(manifest, store.index, store.read, top=bad)


def test_a_non_utf8_name_comes_back_as_its_bytes(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    fd = os.open(os.fsencode(root) + b"/caf\xe9", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"latin-1 name")
    os.close(fd)
    store, manifest = snapshot(tmp_path, root)
    extract(b"".join(tar_stream(manifest, store.index, store.read)), tmp_path / "out")
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9"]


def test_missing_and_corrupt_chunks_are_named(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a").write_bytes(os.urandom(3000))
    store, manifest = snapshot(tmp_path, root)
    partial = dict(store.index)
    partial.pop(manifest.chunks[64:128])
    with pytest.raises(WorkspaceError, match="cannot read a: one of its chunks is missing"):
        tar_stream(manifest, partial, store.read)

    def flipped(pack, ranges):
        data = bytearray(store.read(pack, ranges))
        data[-1] ^= 1
        return bytes(data)

    with pytest.raises(WorkspaceError, match="corrupt"):
        b"".join(tar_stream(manifest, store.index, flipped))
    with pytest.raises(WorkspaceError, match="truncated or missing"):
        b"".join(tar_stream(manifest, store.index, lambda pack, ranges: b""))


def test_memory_stays_bounded_for_a_big_file(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    size = 200 << 20
    with open(root / "big", "wb") as f:  # mostly zeros (cheap to store), with incompressible stretches
        for i in range(0, size, 16 << 20):
            f.seek(i)
            f.write(os.urandom(1 << 20))
        f.truncate(size)
    store = LocalStore(tmp_path / "store")
    sid, _ = store.snapshot(root, emit=lambda line: None, excludes=[])
    manifest = store.manifest(sid)
    assert manifest.nchunks[manifest.paths.index("big")] == size // manifest.chunk_size
    total = largest = 0
    tracemalloc.start()
    try:
        for block in tar_stream(manifest, store.index, store.read):
            total += len(block)
            largest = max(largest, len(block))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > size and largest <= manifest.chunk_size
    assert peak < 3 * WINDOW_BYTES, f"peak {peak >> 20} MiB while streaming {size >> 20} MiB"
