"""Every wire frame and object of PROTOCOL.md v1, validated in one place.

The gateway hands raw client input to these functions and gets back plain, trusted values or an
`Invalid` / `TooLarge` error to send back. Nothing else in the platform parses client input.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time

from .errors import Invalid, TooLarge

# Always used with fullmatch: `$` would also accept a trailing newline.
USER_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CONVERSATION_ID_RE = re.compile(r"c_[A-Za-z0-9_\-]{1,64}")
# PostgreSQL text cannot hold NUL, and UTF-8 cannot hold a lone surrogate: refuse them at the
# edge, so one bad send cannot fail the group commit it would have joined.
UNSTORABLE_TEXT_RE = re.compile("[\x00\ud800-\udfff]")
CLIENT_MSG_ID_MAX = 64
TITLE_MAX = 200
NONCE_MAX = 128

CLIENT_FRAME_TYPES = ("auth", "send", "ack", "read", "typing", "ping")


def now_ms() -> int:
    return int(time.time() * 1000)


def new_conversation_id() -> str:
    return "c_" + secrets.token_urlsafe(12)


def new_message_id() -> str:
    return "m_" + secrets.token_urlsafe(16)


# ---- field validators ----------------------------------------------------------------------------

def validate_user_id(value: object) -> str:
    if not isinstance(value, str) or not USER_ID_RE.fullmatch(value):
        raise Invalid("user_id must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


def validate_conversation_id(value: object) -> str:
    if not isinstance(value, str) or not CONVERSATION_ID_RE.fullmatch(value):
        raise Invalid("conversation_id is malformed")
    return value


def validate_text(value: str, field: str) -> str:
    if UNSTORABLE_TEXT_RE.search(value):
        raise Invalid(f"{field} holds a NUL character or a lone surrogate")
    return value


def validate_client_msg_id(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= CLIENT_MSG_ID_MAX:
        raise Invalid("client_msg_id must be a string of 1-64 characters")
    return validate_text(value, "client_msg_id")


def validate_body(value: object, max_body_bytes: int) -> str:
    if not isinstance(value, str) or value == "":
        raise Invalid("body must be a non-empty string")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > max_body_bytes:
        raise TooLarge(f"body is {size} bytes; the limit is {max_body_bytes}")
    return validate_text(value, "body")


def validate_seq(value: object, field: str = "seq") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{field} must be a non-negative integer")
    return value


def validate_title(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > TITLE_MAX:
        raise Invalid(f"title must be a string of at most {TITLE_MAX} characters")
    return validate_text(value, "title")


def validate_members(value: object, max_members: int) -> list[str]:
    if not isinstance(value, list):
        raise Invalid("members must be a list of user_ids")
    members = list(dict.fromkeys(validate_user_id(member) for member in value))
    if len(members) > max_members:
        raise Invalid(f"a conversation holds at most {max_members} members")
    return members


# ---- client frames -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AuthFrame:
    token: str
    since: int | None


@dataclasses.dataclass(frozen=True)
class SendFrame:
    conversation_id: str
    client_msg_id: str
    body: str


@dataclasses.dataclass(frozen=True)
class AckFrame:
    cursor: int


@dataclasses.dataclass(frozen=True)
class ReadFrame:
    conversation_id: str
    seq: int


@dataclasses.dataclass(frozen=True)
class TypingFrame:
    conversation_id: str


@dataclasses.dataclass(frozen=True)
class PingFrame:
    nonce: object


ClientFrame = AuthFrame | SendFrame | AckFrame | ReadFrame | TypingFrame | PingFrame


class FrameError(Invalid):
    """A client frame that failed validation; `ref` is its client_msg_id when it had one."""

    def __init__(self, cause: Exception, ref: str | None):
        code_error = cause if isinstance(cause, (Invalid, TooLarge)) else Invalid(str(cause))
        super().__init__(code_error.message)
        self.code = code_error.code
        self.ref = ref


def parse_client_frame(text: str, max_body_bytes: int) -> ClientFrame:
    """One text frame to a typed frame, or FrameError (carrying the wire code and the ref)."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        raise FrameError(Invalid("frame is not valid JSON"), None) from None
    if not isinstance(data, dict):
        raise FrameError(Invalid("frame must be a JSON object"), None)
    ref = data.get("client_msg_id") if isinstance(data.get("client_msg_id"), str) else None
    try:
        return _frame_from_dict(data, max_body_bytes)
    except (Invalid, TooLarge) as exc:
        raise FrameError(exc, ref) from None


def _frame_from_dict(data: dict, max_body_bytes: int) -> ClientFrame:
    kind = data.get("type")
    if kind == "send":
        return SendFrame(
            conversation_id=validate_conversation_id(data.get("conversation_id")),
            client_msg_id=validate_client_msg_id(data.get("client_msg_id")),
            body=validate_body(data.get("body"), max_body_bytes),
        )
    if kind == "ack":
        return AckFrame(cursor=validate_seq(data.get("cursor"), "cursor"))
    if kind == "read":
        return ReadFrame(
            conversation_id=validate_conversation_id(data.get("conversation_id")),
            seq=validate_seq(data.get("seq")),
        )
    if kind == "typing":
        return TypingFrame(conversation_id=validate_conversation_id(data.get("conversation_id")))
    if kind == "ping":
        nonce = data.get("nonce")
        if isinstance(nonce, str) and len(nonce) > NONCE_MAX:
            raise Invalid(f"nonce is longer than {NONCE_MAX} characters")
        return PingFrame(nonce=nonce)
    if kind == "auth":
        since = data.get("since")
        if since is not None:
            validate_seq(since, "since")
        token = data.get("token")
        if not isinstance(token, str):
            raise Invalid("auth needs a token")
        return AuthFrame(token=token, since=since)
    if not isinstance(kind, str):
        raise Invalid("frame needs a string `type`")
    raise Invalid(f"unknown frame type {kind!r}")


# ---- server frames -------------------------------------------------------------------------------

def error_frame(code: str, message: str, ref: str | None = None, **extra) -> dict:
    return {"type": "error", "code": code, "message": message, "ref": ref, **extra}


def ready_frame(user_id: str, cursor: int) -> dict:
    return {"type": "ready", "user_id": user_id, "cursor": cursor}


def resync_frame(cursor: int) -> dict:
    return {"type": "resync_required", "cursor": cursor}


def sent_frame(client_msg_id: str, message: dict) -> dict:
    return {"type": "sent", "client_msg_id": client_msg_id, "message": message}


def pong_frame(nonce: object) -> dict:
    return {"type": "pong", "nonce": nonce}


def typing_frame(conversation_id: str, user_id: str) -> dict:
    return {"type": "typing", "conversation_id": conversation_id, "user_id": user_id}


# ---- server frames as text ---------------------------------------------------------------------
# Deliveries leave a shard already rendered: a message's JSON is written once for all its
# recipients, and the gateway forwards text instead of unpickling and re-encoding a dict per
# socket (the two were ~20% of a gateway's CPU under load).


def frame_text(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"))


def mailbox_event_text(kind: str, cursor: int, payload: dict, message_text: str | None = None) -> str:
    """A mailbox event frame; for a message event, `message_text` (the message's JSON) may be
    given so one rendering serves every recipient."""
    if kind == "message" and message_text is not None:
        return f'{{"type":"message","cursor":{cursor},"message":{message_text}}}'
    return frame_text({"type": kind, "cursor": cursor, **payload})
