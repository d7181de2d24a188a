"""sessions.ssh becomes sessions.endpoints: how users reach a session, for any app ({"ssh": ..., "links": ...})

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

sessions = sa.table('sessions', sa.column('id', sa.String), sa.column('ssh', sa.JSON), sa.column('endpoints', sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table('sessions') as batch:
        batch.add_column(sa.Column('endpoints', sa.JSON(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.select(sessions.c.id, sessions.c.ssh).where(sessions.c.ssh.is_not(None))).all()
    for session_id, ssh in rows:
        if ssh:  # a JSON null is not SQL NULL
            conn.execute(sessions.update().where(sessions.c.id == session_id).values(endpoints={"ssh": ssh}))
    with op.batch_alter_table('sessions') as batch:
        batch.drop_column('ssh')


def downgrade() -> None:
    with op.batch_alter_table('sessions') as batch:
        batch.add_column(sa.Column('ssh', sa.JSON(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.select(sessions.c.id, sessions.c.endpoints).where(sessions.c.endpoints.is_not(None))).all()
    for session_id, endpoints in rows:
        if endpoints and endpoints.get("ssh"):
            conn.execute(sessions.update().where(sessions.c.id == session_id).values(ssh=endpoints["ssh"]))
    with op.batch_alter_table('sessions') as batch:
        batch.drop_column('endpoints')
