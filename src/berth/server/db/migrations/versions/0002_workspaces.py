"""persistent workspaces: packs, chunk index, snapshots

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import berth.server.db.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workspace_packs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', berth.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('touched_at', berth.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'session_id', 'digest')
    )
    with op.batch_alter_table('workspace_packs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workspace_packs_digest'), ['digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_workspace_packs_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_workspace_packs_touched_at'), ['touched_at'], unique=False)

    op.create_table('workspace_chunks',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.String(length=64), nullable=False),
    sa.Column('pack_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('length', sa.Integer(), nullable=False),
    sa.Column('raw_length', sa.Integer(), nullable=False),
    sa.Column('codec', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('verified', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['pack_id'], ['workspace_packs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'chunk_id')
    )
    with op.batch_alter_table('workspace_chunks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workspace_chunks_pack_id'), ['pack_id'], unique=False)

    op.create_table('snapshots',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', berth.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('bytes_stored_new', sa.BigInteger(), nullable=False),
    sa.Column('manifest_key', sa.String(length=512), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.create_index('ix_snapshots_session_created', ['session_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_snapshots_project_id'), ['project_id'], unique=False)

    op.create_table('snapshot_packs',
    sa.Column('snapshot_id', sa.String(length=32), nullable=False),
    sa.Column('pack_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['pack_id'], ['workspace_packs.id'], ),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('snapshot_id', 'pack_id')
    )
    with op.batch_alter_table('snapshot_packs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_snapshot_packs_pack_id'), ['pack_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('snapshot_packs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshot_packs_pack_id'))
    op.drop_table('snapshot_packs')
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshots_project_id'))
        batch_op.drop_index('ix_snapshots_session_created')
    op.drop_table('snapshots')
    with op.batch_alter_table('workspace_chunks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workspace_chunks_pack_id'))
    op.drop_table('workspace_chunks')
    with op.batch_alter_table('workspace_packs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workspace_packs_touched_at'))
        batch_op.drop_index(batch_op.f('ix_workspace_packs_project_id'))
        batch_op.drop_index(batch_op.f('ix_workspace_packs_digest'))
    op.drop_table('workspace_packs')
