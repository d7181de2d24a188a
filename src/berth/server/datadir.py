"""The server's files are its own: the data dir 0700; the SQLite database files, secret.key and a local
snapshot store 0600 files in 0700 directories. They hold every user's password hash and token hashes,
the key that opens sealed secrets, and every project's workspace contents.

New files are created private by their writers (engine, secretbox, store), whatever the umask; this
module makes the data dir and tightens what an older berth or a loose umask left readable by others,
once, at start, saying so in one log line.
"""

from __future__ import annotations

import logging

from berth.private_files import ensure_private_dir, tighten, tighten_tree
from berth.settings import ServerSettings

from .db.engine import sqlite_files
from .services import workspaces
from .services.store import local_root

log = logging.getLogger("berth.server")


def prepare(settings: ServerSettings) -> None:
    """Create the data dir (0700) and take group/other access away from everything the server keeps on disk."""
    data_dir = ensure_private_dir(settings.data_dir)
    changed = tighten([data_dir, data_dir / "secret.key", *sqlite_files(settings.resolved_database_url())])
    store = local_root(workspaces.store_url(settings))
    if store is not None:
        changed += tighten_tree(store)
    if changed:
        log.warning("data dir %s was readable by other users: removed their access from %d path(s) "
                    "(data dir, database files, secret.key, snapshot store)", data_dir, changed)
