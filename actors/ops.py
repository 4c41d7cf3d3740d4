"""The operations a gateway asks of a conversation's sequencer, and their outcomes.

They are plain frozen dataclasses, so they cross Ray calls as they are; a whole list of them
travels in one call (one call per batch, not per message: see DESIGN.md's measured call rate).
"""

from __future__ import annotations

import dataclasses

from switchboard.errors import SwitchboardError


@dataclasses.dataclass(frozen=True)
class CreateConversation:
    conversation_id: str
    creator: str
    members: tuple[str, ...]
    title: str
    region: str


@dataclasses.dataclass(frozen=True)
class SendMessage:
    conversation_id: str
    sender: str
    client_msg_id: str
    body: str


@dataclasses.dataclass(frozen=True)
class AddMember:
    conversation_id: str
    actor: str
    user_id: str


@dataclasses.dataclass(frozen=True)
class RemoveMember:
    conversation_id: str
    actor: str
    user_id: str


@dataclasses.dataclass(frozen=True)
class MarkRead:
    conversation_id: str
    user_id: str
    seq: int


Operation = CreateConversation | SendMessage | AddMember | RemoveMember | MarkRead


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One operation's answer: a wire value (message or conversation dict) or an error.
    `created` is False when a retried send found its original message."""

    value: dict | None = None
    error: SwitchboardError | None = None
    created: bool = True

    @classmethod
    def failed(cls, error: SwitchboardError) -> Outcome:
        return cls(error=error, created=False)

    def unwrap(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.value or {}


# ---- operations a shard answers without its writer --------------------------------------------
# They travel in the same batched call as the sequencer's operations (one call per batch per
# shard), but the shard answers them on its event loop: they never wait behind a group commit.


@dataclasses.dataclass(frozen=True)
class Typing:
    """Tell the conversation's other live members that user_id is typing (not stored)."""

    conversation_id: str
    user_id: str


@dataclasses.dataclass(frozen=True)
class TakeTokens:
    """A lease of up to `wanted` tokens of user_id's `kind` budget (actors/budgets.py); sent to
    the shard hosting the user's mailbox. Answered {"granted": n, "retry_after_s": s}."""

    user_id: str
    kind: str
    wanted: int


@dataclasses.dataclass(frozen=True)
class Ack:
    """The newest cursor one of user_id's clients processed (advisory: lets retention prune)."""

    user_id: str
    cursor: int


SEQUENCED = (CreateConversation, SendMessage, AddMember, RemoveMember, MarkRead)
