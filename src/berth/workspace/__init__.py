"""Persistent workspaces: incremental, deduplicated, compressed snapshots of a session's files.

``format``: chunk codec, pack files, location tables · ``manifest``: the per-snapshot file list (the gate
every restore passes) · ``excludes``: gitignore-style patterns · ``snapshot``: walk + read + pack engine ·
``restore``: verified restore · ``local``: a directory-backed store · ``api``: typed HTTP calls ·
``sync``: what the supervisor and CLI call (:func:`~berth.workspace.sync.snapshot_to_server`,
:func:`~berth.workspace.sync.restore_from_server`).

Chunks are named by SHA-256 and stored once per project; packs hold many chunks so that 20,000 small
files are a handful of objects to store and upload.
"""
