"""The first schema: conversations, members, messages, mailboxes, mailbox events, read marks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(80), primary_key=True),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "members",
        sa.Column("conversation_id", sa.String(80), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("joined_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "user_id"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.conversation_id"], ondelete="CASCADE"),
    )
    op.create_index("members_by_user", "members", ["user_id"])
    op.create_table(
        "messages",
        sa.Column("conversation_id", sa.String(80), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False, unique=True),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("client_msg_id", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "seq"),
        sa.UniqueConstraint("conversation_id", "sender", "client_msg_id", name="messages_idempotency"),
    )
    op.create_table(
        "mailboxes",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("head", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pruned_through", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("acked", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "mailbox_events",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("conversation_id", sa.String(80), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("payload", JSONB, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "cursor"),
    )
    op.create_table(
        "read_marks",
        sa.Column("conversation_id", sa.String(80), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "user_id"),
    )


def downgrade() -> None:
    for table in ("read_marks", "mailbox_events", "mailboxes", "messages", "members", "conversations"):
        op.drop_table(table)
