"""Client frames and field validators of PROTOCOL.md v1 (switchboard/protocol.py)."""

from __future__ import annotations

import json

import pytest

from switchboard import protocol
from switchboard.errors import Code, Invalid, TooLarge
from switchboard.protocol import (
    AckFrame,
    AuthFrame,
    FrameError,
    PingFrame,
    ReadFrame,
    SendFrame,
    TypingFrame,
    parse_client_frame,
)

MAX_BODY = 100
CID = "c_abc-DEF_123"


def parse(frame: object, max_body_bytes: int = MAX_BODY):
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return parse_client_frame(text, max_body_bytes)


def refusal(frame: object, max_body_bytes: int = MAX_BODY) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse(frame, max_body_bytes)
    return caught.value


def send(**changes) -> dict:
    return {"type": "send", "conversation_id": CID, "client_msg_id": "k1", "body": "hello", **changes}


# ---- every client frame type -------------------------------------------------------------------

@pytest.mark.parametrize(
    "frame, expected",
    [
        ({"type": "auth", "token": "t"}, AuthFrame(token="t", since=None)),
        ({"type": "auth", "token": "t", "since": 0}, AuthFrame(token="t", since=0)),
        ({"type": "auth", "token": "t", "since": 42}, AuthFrame(token="t", since=42)),
        (send(), SendFrame(conversation_id=CID, client_msg_id="k1", body="hello")),
        ({"type": "ack", "cursor": 7}, AckFrame(cursor=7)),
        ({"type": "read", "conversation_id": CID, "seq": 3}, ReadFrame(conversation_id=CID, seq=3)),
        ({"type": "typing", "conversation_id": CID}, TypingFrame(conversation_id=CID)),
        ({"type": "ping", "nonce": "n-1"}, PingFrame(nonce="n-1")),
        ({"type": "ping", "nonce": 5}, PingFrame(nonce=5)),
        ({"type": "ping"}, PingFrame(nonce=None)),
    ],
)
def test_every_client_frame_type_parses(frame, expected):
    assert parse(frame) == expected


def test_unknown_fields_are_ignored():
    assert parse(send(extra={"x": 1})) == SendFrame(CID, "k1", "hello")


# ---- malformed frames --------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{not json", "", "{\"type\": \"ping\"", "{'type': 'ping'}"])
def test_malformed_json_is_invalid_without_ref(text):
    error = refusal(text)
    assert (error.code, error.ref) == (Code.INVALID, None)
    assert "JSON" in error.message


@pytest.mark.parametrize("text", ["[]", "[{\"type\": \"ping\"}]", "3", "\"send\"", "null", "true"])
def test_a_frame_that_is_not_an_object_is_invalid(text):
    error = refusal(text)
    assert (error.code, error.ref) == (Code.INVALID, None)
    assert "object" in error.message


@pytest.mark.parametrize("kind", ["subscribe", "SEND", "", "sent"])
def test_unknown_type_is_invalid(kind):
    error = refusal({"type": kind, "client_msg_id": "k9"})
    assert (error.code, error.ref) == (Code.INVALID, "k9")
    assert "unknown frame type" in error.message


@pytest.mark.parametrize("frame", [{}, {"type": None}, {"type": 3}, {"type": ["send"]}])
def test_missing_or_non_string_type_is_invalid(frame):
    error = refusal(frame)
    assert (error.code, error.ref) == (Code.INVALID, None)


@pytest.mark.parametrize(
    "frame",
    [
        send(conversation_id=None),
        send(conversation_id="abc"),
        send(conversation_id="c_"),
        send(conversation_id="c_has space"),
        send(conversation_id="c_" + "x" * 65),
        send(body=""),
        send(body=None),
        send(body=5),
        {"type": "send", "conversation_id": CID, "client_msg_id": "k1"},
    ],
)
def test_a_send_with_a_bad_field_is_invalid_and_refers_to_its_client_msg_id(frame):
    error = refusal(frame)
    assert (error.code, error.ref) == (Code.INVALID, "k1")


@pytest.mark.parametrize("client_msg_id", [None, "", 7, "x" * 65])
def test_a_send_with_a_bad_client_msg_id_is_invalid(client_msg_id):
    error = refusal(send(client_msg_id=client_msg_id))
    assert error.code == Code.INVALID
    # A string is echoed back so the client can match the refusal; anything else cannot be.
    assert error.ref == (client_msg_id if isinstance(client_msg_id, str) else None)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ack"},
        {"type": "ack", "cursor": -1},
        {"type": "ack", "cursor": 1.5},
        {"type": "ack", "cursor": "3"},
        {"type": "ack", "cursor": True},
        {"type": "read", "conversation_id": CID},
        {"type": "read", "conversation_id": CID, "seq": -2},
        {"type": "read", "conversation_id": "nope", "seq": 1},
        {"type": "typing"},
        {"type": "typing", "conversation_id": 12},
        {"type": "ping", "nonce": "n" * (protocol.NONCE_MAX + 1)},
        {"type": "auth"},
        {"type": "auth", "token": 5},
        {"type": "auth", "token": "t", "since": -1},
        {"type": "auth", "token": "t", "since": "10"},
        {"type": "auth", "token": "t", "since": False},
    ],
)
def test_other_frames_with_a_bad_field_are_invalid_without_ref(frame):
    error = refusal(frame)
    assert (error.code, error.ref) == (Code.INVALID, None)


def test_a_frame_error_is_an_invalid_error_carrying_the_wire_code():
    error = refusal({"type": "ack"})
    assert isinstance(error, Invalid)
    assert error.to_wire()["code"] == "invalid"


# ---- body size ---------------------------------------------------------------------------------

def test_a_body_of_exactly_the_limit_is_accepted():
    assert parse(send(body="x" * MAX_BODY)).body == "x" * MAX_BODY


def test_a_body_over_the_limit_is_too_large_with_ref():
    error = refusal(send(body="x" * (MAX_BODY + 1)))
    assert (error.code, error.ref) == (Code.TOO_LARGE, "k1")
    assert error.to_wire()["code"] == "too_large"


def test_the_body_limit_counts_utf8_bytes_not_characters():
    assert parse(send(body="é" * (MAX_BODY // 2))).body == "é" * (MAX_BODY // 2)  # 2 bytes each
    error = refusal(send(body="é" * (MAX_BODY // 2 + 1)))
    assert error.code == Code.TOO_LARGE


def test_validate_body_raises_too_large_directly():
    with pytest.raises(TooLarge):
        protocol.validate_body("€" * 4, max_body_bytes=11)  # 12 bytes
    assert protocol.validate_body("€" * 3, max_body_bytes=9) == "€€€"


def test_a_body_with_a_nul_character_is_refused_as_invalid():
    error = refusal(send(body="a\x00b"))
    assert (error.code, error.ref) == (Code.INVALID, "k1")


@pytest.mark.parametrize("validate, value", [(protocol.validate_title, "a\x00b"),
                                             (protocol.validate_client_msg_id, "k\x00")])
def test_other_stored_text_with_a_nul_character_is_invalid(validate, value):
    with pytest.raises(Invalid):
        validate(value)


def test_a_body_with_a_lone_surrogate_is_refused_as_invalid():
    error = refusal('{"type": "send", "conversation_id": "c_1", "client_msg_id": "k1", "body": "a\\ud800"}')
    assert (error.code, error.ref) == (Code.INVALID, "k1")


# ---- identifiers -------------------------------------------------------------------------------

@pytest.mark.parametrize("user_id", ["a", "A.b-c_9", "x" * 64, "0", "..", "-"])
def test_valid_user_ids(user_id):
    assert protocol.validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    ["", "x" * 65, "has space", "émile", "a/b", "a@b", None, 5, ["a"],
     "alice\n"],
)
def test_invalid_user_ids(user_id):
    with pytest.raises(Invalid):
        protocol.validate_user_id(user_id)


@pytest.mark.parametrize("conversation_id", ["c_1", "c_" + "x" * 64, "c_a-b_C", protocol.new_conversation_id()])
def test_valid_conversation_ids(conversation_id):
    assert protocol.validate_conversation_id(conversation_id) == conversation_id


@pytest.mark.parametrize(
    "conversation_id",
    ["", "c_", "c1", "C_1", "x_1", "c_" + "x" * 65, "c_a.b", None, 1,
     "c_a\n"],
)
def test_invalid_conversation_ids(conversation_id):
    with pytest.raises(Invalid):
        protocol.validate_conversation_id(conversation_id)


def test_members_are_validated_deduplicated_and_bounded():
    assert protocol.validate_members(["b", "a", "b"], max_members=2) == ["b", "a"]
    with pytest.raises(Invalid):
        protocol.validate_members(["a", "b", "c"], max_members=2)
    with pytest.raises(Invalid):
        protocol.validate_members("a", max_members=2)
    with pytest.raises(Invalid):
        protocol.validate_members(["ok", "not ok"], max_members=5)


def test_title_defaults_to_empty_and_is_bounded():
    assert protocol.validate_title(None) == ""
    assert protocol.validate_title("t" * protocol.TITLE_MAX) == "t" * protocol.TITLE_MAX
    with pytest.raises(Invalid):
        protocol.validate_title("t" * (protocol.TITLE_MAX + 1))
    with pytest.raises(Invalid):
        protocol.validate_title(3)


def test_server_frames_have_the_documented_shape():
    assert protocol.error_frame("invalid", "bad", "k1") == {
        "type": "error", "code": "invalid", "message": "bad", "ref": "k1"}
    assert protocol.error_frame("rate_limited", "slow", None, retry_after_ms=20)["retry_after_ms"] == 20
    assert protocol.ready_frame("alice", 9) == {"type": "ready", "user_id": "alice", "cursor": 9}
    assert protocol.resync_frame(9) == {"type": "resync_required", "cursor": 9}
    assert protocol.pong_frame("n") == {"type": "pong", "nonce": "n"}
    assert protocol.typing_frame(CID, "bob") == {"type": "typing", "conversation_id": CID, "user_id": "bob"}
