"""login attempts (failed-login throttling shared by every replica)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('ts_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_login_attempts_key_ts', 'login_attempts', ['key', 'ts_ms'])
    op.create_index('ix_login_attempts_ts', 'login_attempts', ['ts_ms'])


def downgrade() -> None:
    op.drop_index('ix_login_attempts_ts', table_name='login_attempts')
    op.drop_index('ix_login_attempts_key_ts', table_name='login_attempts')
    op.drop_table('login_attempts')
