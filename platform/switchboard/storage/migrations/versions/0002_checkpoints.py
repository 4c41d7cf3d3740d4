"""Checkpoints of shard and router state, and the per-conversation version they are checked by.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing conversations start at version 0; nothing has checkpointed them yet.
    op.add_column("conversations", sa.Column("version", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "checkpoints",
        sa.Column("owner", sa.String(120), primary_key=True),
        sa.Column("taken_at", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
    )
    # The state arrives compressed (zlib); PostgreSQL compressing it again would only cost time.
    op.execute("ALTER TABLE checkpoints ALTER COLUMN state SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_column("conversations", "version")
