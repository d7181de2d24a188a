"""The Alembic migrations build exactly the schema the models describe (on the suite's database too)."""

import asyncio
import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from berth.server.db.engine import make_engine, migrate
from berth.server.db.models import Base


def test_migrations_match_the_models(tmp_path):
    pg_admin = os.environ.get("BERTH_TEST_PG_URL")
    if pg_admin:
        import sys

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from pg import create_database

        url = create_database(pg_admin)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"

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
