"""tests/pg.py: create/drop a database and use it through SQLAlchemy's async engine.

Runs against $BERTH_TEST_PG_URL when set (scripts/test.sh's PostgreSQL run);
otherwise it starts its own throwaway server, so it is never silently skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest


def _load_pg_helper():
    path = Path(__file__).resolve().parents[1] / "pg.py"
    name = "berth_tests_pg"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


pg = _load_pg_helper()


@pytest.fixture(scope="module")
def admin_url():
    url = os.environ.get("BERTH_TEST_PG_URL")
    if url:
        yield url
        return
    base = Path(tempfile.mkdtemp(prefix="berth-pg-helper-", dir="/var/tmp"))
    server = pg.start_postgres(base)
    try:
        yield server.admin_url
    finally:
        server.stop()
    assert not base.exists()


def _database_exists(admin_url: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(pg.to_libpq_url(admin_url), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


async def test_create_select_drop(admin_url):
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    url = pg.create_database(admin_url)
    name = url.rsplit("/", 1)[1]
    assert url.startswith("postgresql+psycopg://")
    assert name.startswith("berth_t_")
    try:
        assert _database_exists(admin_url, name)
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 1"))).scalar_one() == 1
                assert (await conn.execute(text("select current_database()"))).scalar_one() == name
        finally:
            await engine.dispose()
    finally:
        pg.drop_database(admin_url, url)
    assert not _database_exists(admin_url, name)


def test_drop_with_open_connection_and_custom_name(admin_url):
    import psycopg

    url = pg.create_database(admin_url, "berth_t_custom_" + os.urandom(3).hex())
    conn = psycopg.connect(pg.to_libpq_url(url))  # left open: WITH (FORCE) must cope
    try:
        pg.drop_database(admin_url, url)
    finally:
        conn.close()
    assert not _database_exists(admin_url, url.rsplit("/", 1)[1])


def test_url_helpers():
    assert (
        pg.to_libpq_url("postgresql+psycopg://u:p@127.0.0.1:5/db")
        == "postgresql://u:p@127.0.0.1:5/db"
    )
    with pytest.raises(ValueError):
        pg.to_libpq_url("sqlite+aiosqlite:///x.db")
