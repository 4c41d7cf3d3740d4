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
