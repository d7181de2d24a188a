"""The Alembic migrations build exactly the schema the models describe (on the suite's database too)."""

import asyncio
import os

import pytest
import sqlalchemy as sa

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from berth.server.db.engine import make_engine, migrate
from berth.server.db.models import Base


def _database_url(tmp_path) -> str:
    pg_admin = os.environ.get("BERTH_TEST_PG_URL")
    if pg_admin:
        import sys

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from pg import create_database

        return create_database(pg_admin)
    return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning", "ignore:.*expression-based index")
def test_migrations_match_the_models(tmp_path):
    url = _database_url(tmp_path)

    async def diff():
        engine = make_engine(url)
        try:
            await migrate(engine)
            await migrate(engine)  # idempotent
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []


# Autogenerate cannot compare expression indexes (it says so and skips them): check that one by name.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning", "ignore:.*expression-based index")
def test_the_session_list_indexes_exist(tmp_path):
    url = _database_url(tmp_path)

    async def names():
        engine = make_engine(url)
        try:
            await migrate(engine)
            query = ("SELECT indexname FROM pg_indexes WHERE tablename = 'sessions'" if engine.dialect.name == "postgresql"
                     else "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions'")
            async with engine.connect() as conn:  # SQLAlchemy's reflection skips expression indexes too
                return {name for (name,) in await conn.execute(sa.text(query))}
        finally:
            await engine.dispose()

    assert {"ix_sessions_app_started", "ix_sessions_app_name"} <= asyncio.run(names())
