"""Engine creation and migrations (Alembic, applied on server start)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from berth.private_files import open_private

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 20, pre_ping: bool = False) -> AsyncEngine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        _create_private_db_file(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # recycle: connections older than 30 min are replaced, so a server-side idle timeout never bites
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=pre_ping, pool_recycle=1800)


def sqlite_files(url: str) -> list[Path]:
    """The files of an on-disk SQLite database (the database, its WAL, shared memory and rollback journal);
    empty for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
        return []
    db = Path(parsed.database)
    return [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def _create_private_db_file(url: str) -> None:
    """Create a new SQLite database file 0600 before SQLite does: SQLite gives its -wal, -shm and -journal
    files the database file's mode, so the user's password hashes and tokens stay private whatever the umask."""
    files = sqlite_files(url)
    if not files or not files[0].parent.is_dir():
        return  # in memory, or no such directory: SQLite says so itself
    with contextlib.suppress(FileExistsError), open_private(files[0], exclusive=True):
        pass  # an empty file is an empty database


def sessionmaker(engine: AsyncEngine, info: dict | None = None) -> async_sessionmaker:
    """`info` reaches every database session as `db.info` (the app puts its secret box and notifier there)."""
    return async_sessionmaker(engine, expire_on_commit=False, info=info or {})


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with several replicas on PostgreSQL)."""
    from alembic import command

    def _upgrade(sync_conn):
        if sync_conn.dialect.name == "postgresql":  # one replica migrates at a time
            sync_conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7347112)")
        command.upgrade(_alembic_config(sync_conn), "head")

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
