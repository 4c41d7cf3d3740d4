"""The home region of each mailbox: where its user's mailbox is live, so a sequencer in any region
knows which region's shard to push a recipient's events to.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the user never attached since regions were recorded; treated as the default region.
    op.add_column("mailboxes", sa.Column("region", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("mailboxes", "region")
