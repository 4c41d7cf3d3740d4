"""Every wire frame and object of PROTOCOL.md v1, validated in one place.

The gateway hands raw client input to these functions and gets back plain, trusted values or an
`Invalid` / `TooLarge` error to send back. Nothing else in the platform parses client input.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
CLIENT_MSG_ID_MAX = 64
TITLE_MAX = 200
NONCE_MAX = 128
# Every integer a client sends (cursor, seq, since, and the query's limit/after/before) must fit
# PostgreSQL's bigint; a ping nonce may be any signed 64-bit integer.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Query integers: plain ASCII decimal digits only. Python's int() also takes ' 5', '+5', '1_0' and
# '\u0663' (any Unicode digit); the API does not. 19 digits hold every value up to INT64_MAX.
QUERY_INT_RE = re.compile(r"[0-9]{1,19}")
# Client JSON (WebSocket frames and HTTP bodies): at most this deep (the top-level object or array
# is depth 1), and no integer literal longer than this (Python's own default int() limit, stated
# here so it does not depend on sys.set_int_max_str_digits).
MAX_JSON_DEPTH = 32
JSON_INT_MAX_DIGITS = 4300

CLIENT_FRAME_TYPES = ("auth", "send", "ack", "read", "typing", "ping")
# An unknown `type` is named in the refusal only when short (the message is ours, not an echo).
UNKNOWN_TYPE_ECHO_MAX = 32


def now_ms() -> int:
    return int(time.time() * 1000)


# A conversation id names its home region: c_<region>_<16 random characters>. Region names hold
# no "_" (settings_checks.REGION_NAME_RE), and ids made before regions were real (c_ and 16
# characters) are too short to carry one: those, and any that names no configured region, belong
# to the default region.
CONVERSATION_RANDOM_CHARS = 16


def new_conversation_id(region: str | None = None) -> str:
    random_part = secrets.token_urlsafe(12)  # 16 characters
    return f"c_{region}_{random_part}" if region else "c_" + random_part


def conversation_region(conversation_id: str, regions, default: str) -> str:
    """The home region a conversation id names (its sequencer's region)."""
    rest = conversation_id[2:]
    cut = len(rest) - CONVERSATION_RANDOM_CHARS - 1
    if cut > 0 and rest[cut] == "_" and rest[:cut] in regions:
        return rest[:cut]
    return default


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


def validate_int(value: object, field: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """A JSON integer within [minimum, maximum]: never a bool, a float (1.0, 1e3) or a string."""
    if type(value) is not int or not minimum <= value <= maximum:
        raise Invalid(f"{field} must be an integer from {minimum} to {maximum}")
    return value


def validate_seq(value: object, field: str = "seq") -> int:
    """A cursor or seq: an integer from 0 to 2**63-1."""
    return validate_int(value, field)


def validate_query_int(raw: str | None, name: str, minimum: int = 0) -> int | None:
    """An HTTP query value (None when absent): plain decimal digits, from `minimum` to 2**63-1."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not QUERY_INT_RE.fullmatch(raw):
        raise Invalid(f"{name} must be a decimal integer from {minimum} to {INT64_MAX}")
    value = int(raw)
    if not minimum <= value <= INT64_MAX:
        raise Invalid(f"{name} must be a decimal integer from {minimum} to {INT64_MAX}")
    return value


def validate_nonce(value: object) -> str | int | None:
    """A ping nonce, echoed back in the pong: a string of at most 128 characters, a signed 64-bit
    integer, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > NONCE_MAX:
            raise Invalid(f"nonce is longer than {NONCE_MAX} characters")
        if LONE_SURROGATE_RE.search(value):  # echoed back: it must encode as UTF-8
            raise Invalid("nonce holds a lone surrogate")
        return value
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    raise Invalid(f"nonce must be a string of at most {NONCE_MAX} characters, a 64-bit integer or null")


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


# ---- strict JSON ---------------------------------------------------------------------------------
# One parser for all client JSON. Python's json module alone takes NaN and Infinity (and turns
# 1e400 into inf), none of which is JSON nor can be written back as JSON; recurses once per level
# of nesting (RecursionError); and reads bytes as UTF-16 or UTF-32 when they look like it. Every
# refusal here is Invalid, whose message is our own.

def _parse_constant(name: str) -> object:
    raise Invalid("NaN and Infinity are not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid("a JSON number is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > JSON_INT_MAX_DIGITS:
        raise Invalid(f"a JSON integer has more than {JSON_INT_MAX_DIGITS} digits")
    return int(text)


_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant)


def parse_json(raw: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Client JSON text (str, or bytes that must be UTF-8) to a value, or Invalid: for invalid
    JSON or UTF-8, NaN/Infinity, a number that overflows a float, an integer of more than 4300
    digits, or nesting deeper than `max_depth` (the top-level object or array is depth 1)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("JSON text is not valid UTF-8") from None
    elif not isinstance(raw, str):
        raise Invalid("JSON text must be a string")
    try:
        value = _DECODER.decode(raw)
    except json.JSONDecodeError as exc:
        raise Invalid(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise Invalid(f"JSON is nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError):
        raise Invalid("not valid JSON") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: object, max_depth: int) -> None:
    """Refuses nesting deeper than max_depth, without recursion; a flat object costs one pass
    over its values."""
    if not isinstance(value, (dict, list)):
        return
    if max_depth < 1:
        raise Invalid(f"JSON is nested deeper than {max_depth} levels")
    pending = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, (dict, list)):
                if depth >= max_depth:
                    raise Invalid(f"JSON is nested deeper than {max_depth} levels")
                pending.append((child, depth + 1))


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict:
    """An HTTP request body: a JSON object ({} for an empty body), or Invalid."""
    if len(raw) == 0:
        return {}
    value = parse_json(raw, max_depth)
    if not isinstance(value, dict):
        raise Invalid("request body must be a JSON object")
    return value


def frame_too_large(text: str, limit: int) -> bool:
    """Whether a text frame is over `limit` bytes of UTF-8; encodes only when it might be (a
    character is 1 to 4 bytes)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        return len(text) > limit
    if len(text) * 4 <= limit:
        return False
    if len(text) > limit:
        return True
    return len(text.encode("utf-8", errors="surrogatepass")) > limit


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
    nonce: str | int | None


ClientFrame = AuthFrame | SendFrame | AckFrame | ReadFrame | TypingFrame | PingFrame


class FrameError(Invalid):
    """A client frame that failed validation; `ref` is its client_msg_id when it had one."""

    def __init__(self, cause: Exception, ref: str | None):
        code_error = cause if isinstance(cause, (Invalid, TooLarge)) else Invalid(str(cause))
        super().__init__(code_error.message)
        self.code = code_error.code
        self.ref = ref


def parse_client_frame(text: str, max_body_bytes: int, *, max_depth: int = MAX_JSON_DEPTH,
                       max_frame_bytes: int | None = None) -> ClientFrame:
    """One text frame to a typed frame, or FrameError (carrying the wire code and the ref).

    `max_body_bytes` bounds a send's body; `max_frame_bytes`, when given, the whole frame's UTF-8
    (TooLarge before parsing: e.g. the auth frame's own, smaller limit); `max_depth` its JSON
    nesting."""
    if max_frame_bytes is not None and frame_too_large(text, max_frame_bytes):
        raise FrameError(TooLarge(f"frame is over {max_frame_bytes} bytes"), None)
    try:
        data = parse_json(text, max_depth)
    except Invalid as exc:
        raise FrameError(exc, None) from None
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
        return PingFrame(nonce=validate_nonce(data.get("nonce")))
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
    if len(kind) > UNKNOWN_TYPE_ECHO_MAX:
        raise Invalid("unknown frame type")
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
    """A server frame as strict JSON: NaN or Infinity anywhere is a bug (ValueError), never a
    frame a client's parser would refuse."""
    return json.dumps(frame, separators=(",", ":"), allow_nan=False)


def mailbox_event_text(kind: str, cursor: int, payload: dict, message_text: str | None = None) -> str:
    """A mailbox event frame; for a message event, `message_text` (the message's JSON) may be
    given so one rendering serves every recipient."""
    if kind == "message" and message_text is not None:
        return f'{{"type":"message","cursor":{cursor},"message":{message_text}}}'
    return frame_text({"type": kind, "cursor": cursor, **payload})
