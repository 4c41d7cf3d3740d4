"""The tables, as SQLAlchemy Core metadata. Changes go through a new Alembic revision too.

conversations   one row per conversation; last_seq is the sequencer's fence (see sql_store.apply)
members         who is in which conversation (and so who gets its events)
messages        the durable log; (conversation_id, seq) is the order, and the unique
                (conversation_id, sender, client_msg_id) makes a retried send find its original
mailboxes       one row per user: head is the last cursor handed out, pruned_through the last
                cursor deleted by retention, acked the highest cursor a client acknowledged,
                region the home region its mailbox is live in
mailbox_events  the per-user cursor log; a message event points at its message row instead of
                copying the body to every member
read_marks      the highest seq each member marked read
checkpoints     one row per actor (a shard, a router): its state as one compressed document, so a
                restarted actor loads it and replays only what changed after it (actors/checkpoint.py)
placements      one row per region: its shard count and the epoch of that placement, moved by every
                reshard (storage/placements.py)
placement_fences one row per shard: the epoch its commits must carry; each group commit holds its
                shard's row shared and checks it (a shard working from an older placement is refused)
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", String(80), primary_key=True),
    Column("title", Text, nullable=False, server_default=""),
    Column("region", String(64), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    # Moved by every commit that changes the conversation (messages, members, read marks): the
    # watermark a checkpoint records per conversation, to tell what changed after it.
    Column("version", BigInteger, nullable=False, server_default="0"),
)

members = Table(
    "members",
    metadata,
    Column("conversation_id", String(80), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("joined_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("conversation_id", "user_id"),
    ForeignKeyConstraint(["conversation_id"], ["conversations.conversation_id"], ondelete="CASCADE"),
    Index("members_by_user", "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("conversation_id", String(80), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("message_id", String(40), nullable=False, unique=True),
    Column("sender", String(64), nullable=False),
    Column("client_msg_id", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("conversation_id", "seq"),
    UniqueConstraint("conversation_id", "sender", "client_msg_id", name="messages_idempotency"),
)

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("head", BigInteger, nullable=False, server_default="0"),
    Column("pruned_through", BigInteger, nullable=False, server_default="0"),
    Column("acked", BigInteger, nullable=False, server_default="0"),
    # The user's home region, recorded when a socket attaches there (NULL: the default region):
    # a commit's cursor allocation returns it, so the sequencer pushes to the right region.
    Column("region", String(64), nullable=True),
)

mailbox_events = Table(
    "mailbox_events",
    metadata,
    Column("user_id", String(64), nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("conversation_id", String(80), nullable=False),
    Column("seq", BigInteger, nullable=True),
    Column("payload", JSONB, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "cursor"),
)

read_marks = Table(
    "read_marks",
    metadata,
    Column("conversation_id", String(80), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("conversation_id", "user_id"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("owner", String(120), primary_key=True),  # the actor's name, e.g. shard:local:0
    Column("taken_at", BigInteger, nullable=False),  # ms since the epoch
    Column("state", LargeBinary, nullable=False),  # opaque here: actors/checkpoint.py encodes it
)

placements = Table(
    "placements",
    metadata,
    Column("region", String(64), primary_key=True),
    Column("shard_count", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("changed_at", BigInteger, nullable=False),  # ms since the epoch
)

placement_fences = Table(
    "placement_fences",
    metadata,
    Column("region", String(64), nullable=False),
    Column("shard_index", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    PrimaryKeyConstraint("region", "shard_index"),
)
