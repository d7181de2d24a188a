"""network scope of each resource sample (the session's own traffic, or the worker's)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('session_samples', 'worker_samples'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('network_scope', sa.String(length=8), nullable=True))


def downgrade() -> None:
    for table in ('session_samples', 'worker_samples'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('network_scope')
