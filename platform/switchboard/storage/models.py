"""The platform's records as plain dataclasses: what storage returns and what actors pass around."""

from __future__ import annotations

import dataclasses

MESSAGE = "message"
RECEIPT = "receipt"
MEMBER = "member"


@dataclasses.dataclass
class Conversation:
    conversation_id: str
    title: str
    region: str
    created_by: str
    created_at: int
    last_seq: int
    members: set[str]
    # The highest seq each member marked read: the sequencer's memory of receipts already sent.
    # Loaded with the conversation (not part of its wire form).
    read_marks: dict[str, int] = dataclasses.field(default_factory=dict)
    # Moved by every commit that changes the conversation; a checkpoint is current for it while
    # the stored version equals the one it recorded. Not part of the wire form either.
    version: int = 0

    def to_wire(self) -> dict:
        return {
            "conversation_id": self.conversation_id,
            "title": self.title,
            "members": sorted(self.members),
            "region": self.region,
            "last_seq": self.last_seq,
            "created_at": self.created_at,
        }


@dataclasses.dataclass(frozen=True)
class Message:
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    client_msg_id: str
    body: str
    ts: int

    def to_wire(self) -> dict:
        # Spelled out: dataclasses.asdict deep-copies, and this runs once per message per commit.
        return {
            "conversation_id": self.conversation_id, "seq": self.seq, "message_id": self.message_id,
            "sender": self.sender, "client_msg_id": self.client_msg_id, "body": self.body, "ts": self.ts,
        }


@dataclasses.dataclass
class MailboxEvent:
    """One entry of a user's cursor log. `payload` is the wire body of the event without its
    `type` and `cursor`: {"message": {...}} for a message, the receipt or member fields otherwise."""

    user_id: str
    kind: str
    conversation_id: str
    payload: dict
    seq: int | None = None  # the message's seq, for message events
    cursor: int = 0  # assigned by the storage inside the commit
    # The recipient's home region as its mailbox row says, learned in the same commit (None: it
    # never attached anywhere since regions were recorded: the default region).
    region: str | None = None

    def to_frame(self) -> dict:
        return {"type": self.kind, "cursor": self.cursor, **self.payload}


@dataclasses.dataclass(frozen=True)
class MailboxHead:
    head: int
    pruned_through: int


@dataclasses.dataclass
class WriteBatch:
    """Everything one group commit writes, in one transaction."""

    new_conversations: list[Conversation] = dataclasses.field(default_factory=list)
    added_members: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    removed_members: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    messages: list[Message] = dataclasses.field(default_factory=list)
    # conversation_id -> (last_seq the sequencer believes is stored, last_seq after this batch), for
    # every stored conversation the batch changes (equal when only members or read marks change);
    # each fence also moves the conversation's version by one.
    seq_fences: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    read_marks: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    events: list[MailboxEvent] = dataclasses.field(default_factory=list)
    # (region, shard index, epoch): the placement the committing shard works from; the commit is
    # refused (StalePlacement) unless it is still that shard's epoch (storage/placements.py).
    placement_fence: tuple[str, int, int] | None = None

    def is_empty(self) -> bool:
        return not (self.new_conversations or self.added_members or self.removed_members
                    or self.messages or self.read_marks or self.events)


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    """An actor's last checkpoint as stored: when it was taken and its encoded state."""

    owner: str
    taken_at: int  # ms since the epoch
    state: bytes
