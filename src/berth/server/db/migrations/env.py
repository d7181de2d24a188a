"""Alembic environment: runs on the connection handed over by berth.server.db.engine.migrate."""

from alembic import context

from berth.server.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use for autogenerate: needs BERTH_DATABASE_URL
    import os

    from sqlalchemy import create_engine

    connection = create_engine(os.environ["BERTH_DATABASE_URL_SYNC"]).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
