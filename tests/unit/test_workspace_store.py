"""The server's object store over fsspec: a local directory and an in-memory filesystem behave alike."""

from __future__ import annotations

import pytest

from berth.server.services.store import open_store


@pytest.fixture(params=["dir", "memory"])
def store(request, tmp_path):
    url = str(tmp_path / "store") if request.param == "dir" else f"memory://berth-test-{id(request)}"
    yield open_store(url)


def test_put_get_ranges_list_delete(store):
    store.put("packs/1/ab/abc-1-x.pack", b"0123456789")
    assert store.get("packs/1/ab/abc-1-x.pack") == b"0123456789"
    assert store.read_ranges("packs/1/ab/abc-1-x.pack", [(2, 3), (8, 2)]) == b"23489"
    upload = store.upload("packs/1/cd/cde-2-y.pack")
    upload.write([b"ab", memoryview(b"cd")])
    upload.write([b"ef"])
    assert "packs/1/cd/cde-2-y.pack" not in store.list("packs")  # not visible before commit
    upload.commit()
    assert store.get("packs/1/cd/cde-2-y.pack") == b"abcdef"
    assert sorted(store.list("packs")) == ["packs/1/ab/abc-1-x.pack", "packs/1/cd/cde-2-y.pack"]
    aborted = store.upload("packs/1/ef/efg-3-z.pack")
    aborted.write([b"partial"])
    aborted.abort()
    store.delete("packs/1/ab/abc-1-x.pack")
    store.delete("packs/1/ab/abc-1-x.pack")  # deleting twice is fine
    assert store.list("packs") == ["packs/1/cd/cde-2-y.pack"]
    with pytest.raises(FileNotFoundError):
        store.get("packs/1/ab/abc-1-x.pack")
    assert store.list("nothing-here") == []
