"""worker tunnels: which server replica holds each agent's tunnel, since when, and where other replicas reach it

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('tunnel_replica', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('tunnel_since', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('tunnel_url', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('tunnel_url')
        batch.drop_column('tunnel_since')
        batch.drop_column('tunnel_replica')
