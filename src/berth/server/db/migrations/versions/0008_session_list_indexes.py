"""indexes for the web instance list: one app's sessions by start time (then id) and by name

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_sessions_app_started', 'sessions', ['app', sa.text('coalesce(started_at, created_at)'), 'id'])
    op.create_index('ix_sessions_app_name', 'sessions', ['app', 'name'])


def downgrade() -> None:
    op.drop_index('ix_sessions_app_name', table_name='sessions')
    op.drop_index('ix_sessions_app_started', table_name='sessions')
