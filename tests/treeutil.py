"""Test helper: a directory tree's contents and metadata, for exact round-trip comparisons."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything a restore must keep: kind, permission bits, mtime, content or target (root excluded)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            s = p.lstat()
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("l", os.readlink(p), s.st_mtime_ns)
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("d", stat.S_IMODE(s.st_mode), s.st_mtime_ns)
            else:
                out[rel] = ("f", stat.S_IMODE(s.st_mode), s.st_mtime_ns, p.read_bytes())
    return out
