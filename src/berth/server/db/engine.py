"""Engine creation and migrations (Alembic, applied on server start)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 20, pre_ping: bool = False) -> AsyncEngine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
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


def sessionmaker(engine: AsyncEngine, info: dict | None = None) -> async_sessionmaker:
    """`info` reaches every database session as `db.info` (the app puts its secret box there)."""
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
