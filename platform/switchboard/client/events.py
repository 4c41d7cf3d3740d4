"""Typed, frozen views of the server's objects and frames (PROTOCOL.md "Objects", mailbox events).

The server may add fields; these read the fields the protocol promises and ignore the rest.
`parse_event` turns one server frame into the event a Client yields, or None for frames that are
answers rather than events (ready, sent, pong) and for types this SDK does not know.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    client_msg_id: str
    body: str
    ts: int  # the server's commit time, ms since the epoch

    @classmethod
    def from_wire(cls, data: dict) -> Message:
        return cls(data["conversation_id"], data["seq"], data["message_id"], data["sender"],
                   data["client_msg_id"], data["body"], data["ts"])


@dataclasses.dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    title: str
    members: tuple[str, ...]
    region: str
    last_seq: int
    created_at: int

    @classmethod
    def from_wire(cls, data: dict) -> Conversation:
        return cls(data["conversation_id"], data.get("title") or "", tuple(data.get("members", ())),
                   data.get("region", ""), data.get("last_seq", 0), data.get("created_at", 0))


# ---- mailbox events (they carry a cursor) ------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class MessageEvent:
    cursor: int
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptEvent:
    cursor: int
    conversation_id: str
    user_id: str
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class MemberEvent:
    cursor: int
    conversation_id: str
    user_id: str
    action: str  # "joined" or "left"


# ---- other things a Client yields (no cursor) ---------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class TypingEvent:
    conversation_id: str
    user_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ResyncRequired:
    """Events after the cursor you resumed from were pruned: reload history over HTTP. Live events
    go on from `cursor` (the mailbox head)."""

    cursor: int


@dataclasses.dataclass(frozen=True, slots=True)
class ServerError:
    """An `error` frame that answers no pending send (a failed read or typing, a bad frame)."""

    code: str
    message: str
    ref: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """A session became ready at mailbox head `cursor`. `resumed`: it was opened with `since` (given
    here) and replayed what came after it; `session` numbers the Client's connection attempts from 1
    (the number its on_frame recorder sees)."""

    cursor: int
    resumed: bool
    session: int
    since: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnected:
    """A session ended; the Client reconnects by itself unless it was closed or gave up."""

    code: int | None
    reason: str
    session: int


MailboxEvent = MessageEvent | ReceiptEvent | MemberEvent
Event = MailboxEvent | TypingEvent | ResyncRequired | ServerError | Connected | Disconnected


def parse_event(frame: dict) -> MailboxEvent | TypingEvent | ResyncRequired | None:
    kind = frame.get("type")
    if kind == "message":
        return MessageEvent(frame["cursor"], Message.from_wire(frame["message"]))
    if kind == "receipt":
        return ReceiptEvent(frame["cursor"], frame["conversation_id"], frame["user_id"], frame["seq"])
    if kind == "member":
        return MemberEvent(frame["cursor"], frame["conversation_id"], frame["user_id"], frame["action"])
    if kind == "typing":
        return TypingEvent(frame["conversation_id"], frame["user_id"])
    if kind == "resync_required":
        return ResyncRequired(frame["cursor"])
    return None
