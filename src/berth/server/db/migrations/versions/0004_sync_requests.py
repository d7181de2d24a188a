"""on-demand workspace sync requests

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
import berth.server.db.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions') as batch:
        batch.add_column(sa.Column('sync_requested_at', berth.server.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sessions') as batch:
        batch.drop_column('sync_requested_at')
