"""worker backends: the session backends each worker offers, and the one a session needs (claiming)

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('backends', sa.JSON(), nullable=True))
    with op.batch_alter_table('sessions') as batch:
        batch.add_column(sa.Column('required_backend', sa.String(length=32), nullable=True))
    # Workers registered before this offered the process backend only (they say otherwise when they re-register).
    workers = sa.table('workers', sa.column('backends', sa.JSON()))
    op.execute(workers.update().values(backends=['process']))
    with op.batch_alter_table('workers') as batch:
        batch.alter_column('backends', existing_type=sa.JSON(), nullable=False)
    # Sessions still waiting that name an image need a container worker, as new launches do.
    sessions = sa.table('sessions', sa.column('id', sa.String()), sa.column('status', sa.String()),
                        sa.column('config', sa.JSON()), sa.column('required_backend', sa.String()))
    conn = op.get_bind()
    waiting = conn.execute(sa.select(sessions.c.id, sessions.c.config).where(sessions.c.status == 'queued')).all()
    for session_id, config in waiting:
        if isinstance(config, dict) and config.get('image'):
            conn.execute(sessions.update().where(sessions.c.id == session_id).values(required_backend='container'))


def downgrade() -> None:
    with op.batch_alter_table('sessions') as batch:
        batch.drop_column('required_backend')
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('backends')
