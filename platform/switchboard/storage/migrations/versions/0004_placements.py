"""Each region's placement (its shard count) with an epoch every reshard moves, so the shard
count can change on a running platform and a shard still working from an older placement has
its commits refused (the placement fence in group_commit.py).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "placements",
        sa.Column("region", sa.String(64), primary_key=True),
        sa.Column("shard_count", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
    )
    # One row per shard rather than the region's row: each shard's commits lock only their own
    # row (shared), one commit at a time, so a reshard's update of the rows is never starved by
    # the overlapping share locks of several shards committing.
    op.create_table(
        "placement_fences",
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("shard_index", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("region", "shard_index"),
    )


def downgrade() -> None:
    op.drop_table("placement_fences")
    op.drop_table("placements")
