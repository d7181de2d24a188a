"""resource metrics: session and worker samples and per-minute rollups; idle report and extension on sessions

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import berth.server.db.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _sample_columns() -> list[sa.Column]:
    return [
        sa.Column('ts_ms', sa.BigInteger(), nullable=False),
        sa.Column('cpu', sa.Float(), nullable=True),
        sa.Column('mem_mb', sa.Float(), nullable=True),
        sa.Column('disk_read_mbs', sa.Float(), nullable=True),
        sa.Column('disk_write_mbs', sa.Float(), nullable=True),
        sa.Column('net_rx_mbs', sa.Float(), nullable=True),
        sa.Column('net_tx_mbs', sa.Float(), nullable=True),
        sa.Column('gpu_util', sa.Float(), nullable=True),
        sa.Column('gpu_mem_used_mb', sa.Float(), nullable=True),
        sa.Column('gpu_mem_total_mb', sa.Float(), nullable=True),
        sa.Column('gpus', sa.JSON(), nullable=True),
        sa.Column('processes', sa.Integer(), nullable=True),
    ]


SERIES = ('cpu', 'mem_mb', 'disk_read_mbs', 'disk_write_mbs', 'net_rx_mbs', 'net_tx_mbs', 'gpu_util', 'gpu_mem_used_mb',
          'gpu_mem_total_mb')


def _create_rollups(name: str, owner: str, target: str) -> None:
    columns = []
    for series in SERIES:
        columns += [sa.Column(f'{series}_min', sa.Float(), nullable=True), sa.Column(f'{series}_max', sa.Float(), nullable=True),
                    sa.Column(f'{series}_sum', sa.Float(), nullable=False), sa.Column(f'{series}_n', sa.Integer(), nullable=False)]
    op.create_table(name,
    sa.Column(owner, sa.String(length=32), nullable=False),
    sa.Column('minute_ms', sa.BigInteger(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    *columns,
    sa.ForeignKeyConstraint([owner], [target], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint(owner, 'minute_ms')
    )
    op.create_index(f'ix_{name}_minute', name, ['minute_ms'], unique=False)


def upgrade() -> None:
    sample_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table('session_samples',
    sa.Column('id', sample_id, autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    *_sample_columns(),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_session_samples_session_ts', 'session_samples', ['session_id', 'ts_ms'], unique=False)
    op.create_index('ix_session_samples_ts', 'session_samples', ['ts_ms'], unique=False)
    op.create_table('worker_samples',
    sa.Column('id', sample_id, autoincrement=True, nullable=False),
    sa.Column('worker_id', sa.String(length=32), nullable=False),
    *_sample_columns(),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_worker_samples_worker_ts', 'worker_samples', ['worker_id', 'ts_ms'], unique=False)
    op.create_index('ix_worker_samples_ts', 'worker_samples', ['ts_ms'], unique=False)
    _create_rollups('session_rollups', 'session_id', 'sessions.id')
    _create_rollups('worker_rollups', 'worker_id', 'workers.id')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kept_alive_by', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('idle_extended_until', berth.server.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('idle_extended_until')
        batch_op.drop_column('kept_alive_by')
    for name in ('worker_rollups', 'session_rollups'):
        op.drop_index(f'ix_{name}_minute', table_name=name)
        op.drop_table(name)
    op.drop_index('ix_worker_samples_ts', table_name='worker_samples')
    op.drop_index('ix_worker_samples_worker_ts', table_name='worker_samples')
    op.drop_table('worker_samples')
    op.drop_index('ix_session_samples_ts', table_name='session_samples')
    op.drop_index('ix_session_samples_session_ts', table_name='session_samples')
    op.drop_table('session_samples')
