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


# ---- hostile clients: strict JSON (one parser for frames and HTTP bodies) ----------------------

DEEP = 10_000


@pytest.mark.parametrize(
    "raw",
    ["[" * DEEP + "]" * DEEP, ("[" * DEEP + "]" * DEEP).encode(),
     '{"a":' * DEEP + "1" + "}" * DEEP, ('{"a":' * DEEP + "1" + "}" * DEEP).encode(),
     "[" * DEEP, "[" * 500 + "]" * 500],
)
def test_json_nested_far_too_deep_is_invalid_never_a_recursion_error(raw):
    with pytest.raises(Invalid) as caught:
        protocol.parse_json(raw)
    assert type(caught.value) is Invalid


def test_json_depth_counts_the_top_level_container_as_one():
    assert protocol.MAX_JSON_DEPTH == 32
    assert protocol.parse_json("[" * 32 + "]" * 32) is not None
    with pytest.raises(Invalid, match="deeper"):
        protocol.parse_json("[" * 33 + "]" * 33)
    assert protocol.parse_json('{"a": {"b": [1]}}', max_depth=3) == {"a": {"b": [1]}}
    with pytest.raises(Invalid, match="deeper"):
        protocol.parse_json('{"a": {"b": [1]}}', max_depth=2)
    with pytest.raises(Invalid, match="deeper"):  # a deep branch after a shallow one
        protocol.parse_json('[[1], 2, {"x": [[[]]]}]', max_depth=3)
    assert protocol.parse_json("7", max_depth=0) == 7  # a scalar has no depth


@pytest.mark.parametrize(
    "raw",
    ["NaN", "Infinity", "-Infinity", "[NaN]", '{"x": Infinity}', "1e400", "-1e400", "[1E999]",
     "1" * 4301, "-" + "1" * 4301, b"1e400", b"NaN"],
)
def test_nan_infinity_overflowing_floats_and_huge_integers_are_invalid(raw):
    with pytest.raises(Invalid):
        protocol.parse_json(raw)


def test_the_largest_allowed_integer_literal_and_ordinary_numbers_parse():
    assert protocol.parse_json("9" * 4300) == int("9" * 4300)
    assert protocol.parse_json("-" + "9" * 4300) == -int("9" * 4300)
    assert protocol.parse_json("[1.5, -0.0, 1e-400, 1e308, 0]") == [1.5, -0.0, 0.0, 1e308, 0]


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b'{"a": "\xc3"}', b'"\xed\xa0\x80"',  # a truncated sequence; an encoded surrogate
     "\ufeff{}".encode("utf-16"), '{"a": 1}'.encode("utf-16-le"), b"\xef\xbb\xbf{}"],
)
def test_json_bytes_must_be_utf8(raw):
    with pytest.raises(Invalid):
        protocol.parse_json(raw)


@pytest.mark.parametrize("raw", ["", " ", "{", "{}{}", "[1,]", "{'a': 1}", "\x00", None, 5, ["[]"]])
def test_anything_but_one_json_text_is_invalid(raw):
    with pytest.raises(Invalid):
        protocol.parse_json(raw)


def test_json_bytes_and_text_parse_the_same():
    text = '{"body": "h\u00e9llo \u20ac", "n": [1, 2.5, null, true]}'
    assert protocol.parse_json(text) == protocol.parse_json(text.encode()) == json.loads(text)


def test_a_deep_frame_is_an_invalid_frame_without_ref():
    for raw in ["[" * DEEP + "]" * DEEP, '{"type": "send", "client_msg_id": "k1", "x": ' + "[" * DEEP + "]" * DEEP + "}"]:
        error = refusal(raw)
        assert (error.code, error.ref) == (Code.INVALID, None)


def test_the_frame_depth_limit_is_a_keyword():
    nested = {"type": "ping", "x": [[[[1]]]]}
    assert parse_client_frame(json.dumps(nested), MAX_BODY) == PingFrame(nonce=None)
    with pytest.raises(FrameError) as caught:
        parse_client_frame(json.dumps(nested), MAX_BODY, max_depth=4)
    assert caught.value.code == Code.INVALID


@pytest.mark.parametrize("text", ['{"type": "ack", "cursor": NaN}', '{"type": "ack", "cursor": 1e400}',
                                  '{"type": "ping", "nonce": Infinity}', '{"type": "ping", "nonce": -Infinity}'])
def test_frames_with_non_json_numbers_are_invalid(text):
    error = refusal(text)
    assert (error.code, error.ref) == (Code.INVALID, None)


def test_http_bodies_are_objects_and_empty_means_empty_object():
    assert protocol.parse_json_body(b"") == {}
    assert protocol.parse_json_body(b'{"members": ["a"]}') == {"members": ["a"]}
    assert protocol.parse_json_body(b' {"seq": 3} \n') == {"seq": 3}
    for raw in [b"[]", b"3", b'"x"', b"null", b" ", b"{", b"\xff", b"NaN", b'{"x": 1e400}',
                b"[" * DEEP + b"]" * DEEP]:
        with pytest.raises(Invalid):
            protocol.parse_json_body(raw)
    with pytest.raises(Invalid, match="deeper"):
        protocol.parse_json_body(b'{"a": [[]]}', max_depth=2)


# ---- hostile clients: 64-bit integers ----------------------------------------------------------

INT64_MAX = 2**63 - 1


INT_FIELDS = {"cursor": {"type": "ack"}, "seq": {"type": "read", "conversation_id": CID},
              "since": {"type": "auth", "token": "t"}}


@pytest.mark.parametrize("value", [0, 1, INT64_MAX])
@pytest.mark.parametrize("field", list(INT_FIELDS))
def test_integer_fields_take_every_value_up_to_int64_max(field, value):
    assert getattr(parse({**INT_FIELDS[field], field: value}), field) == value


@pytest.mark.parametrize("value", [2**63, 2**64, 10**30, -1, -(2**63), 1.0, 0.0, 3.5, True, False, "1", [1], {}])
@pytest.mark.parametrize("field", list(INT_FIELDS))
def test_integer_fields_refuse_anything_but_an_int64(field, value):
    error = refusal({**INT_FIELDS[field], field: value})
    assert (error.code, error.ref) == (Code.INVALID, None)


@pytest.mark.parametrize("number", ["1e3", "1E0", "5.0", "-0.0", "1.0e0"])
@pytest.mark.parametrize("field", list(INT_FIELDS))
def test_floats_where_ints_belong_are_invalid(field, number):
    text = json.dumps({**INT_FIELDS[field], field: "N"}).replace('"N"', number)
    assert refusal(text).code == Code.INVALID


def test_validate_seq_and_validate_int_bound_to_64_bits():
    assert protocol.validate_seq(INT64_MAX) == INT64_MAX
    with pytest.raises(Invalid):
        protocol.validate_seq(INT64_MAX + 1)
    assert protocol.validate_int(5, "limit", minimum=1) == 5
    with pytest.raises(Invalid, match="limit"):
        protocol.validate_int(0, "limit", minimum=1)
    assert protocol.INT64_MAX == INT64_MAX and protocol.INT64_MIN == -(2**63)


@pytest.mark.parametrize("raw, expected", [(None, None), ("0", 0), ("7", 7), ("007", 7),
                                           (str(INT64_MAX), INT64_MAX), ("0" * 19, 0)])
def test_query_ints_are_plain_decimal_digits(raw, expected):
    assert protocol.validate_query_int(raw, "after") == expected


@pytest.mark.parametrize(
    "raw",
    ["", " 5", "5 ", "\t5", "5\n", "+5", "-5", "-0", "1_0", "1e3", "1.0", "0x10", "\u0663", "\uff15",
     "5\u00a0", str(2**63), str(2**64), "0" * 20, "9" * 4301, "abc", "1,2"],
)
def test_query_ints_refuse_what_python_int_would_take_and_what_overflows(raw):
    with pytest.raises(Invalid, match="after"):
        protocol.validate_query_int(raw, "after")


def test_query_int_minimum():
    assert protocol.validate_query_int("1", "limit", minimum=1) == 1
    with pytest.raises(Invalid, match="limit"):
        protocol.validate_query_int("0", "limit", minimum=1)


# ---- hostile clients: the ping nonce, and strict JSON out --------------------------------------

@pytest.mark.parametrize("nonce", ["", "n" * protocol.NONCE_MAX, "h\u00e9 \u20ac", 0, -1, INT64_MAX, -(2**63), None])
def test_a_nonce_is_a_short_string_an_int64_or_null_and_comes_back_as_strict_json(nonce):
    frame = parse({"type": "ping", "nonce": nonce})
    assert frame == PingFrame(nonce=nonce)
    assert json.loads(protocol.frame_text(protocol.pong_frame(frame.nonce)),
                      parse_constant=lambda name: pytest.fail(name)) == {"type": "pong", "nonce": nonce}


@pytest.mark.parametrize("nonce", [2**63, -(2**63) - 1, 2**64, 1.5, 0.0, True, False, [], {}, ["n"], {"a": 1},
                                   "n" * (protocol.NONCE_MAX + 1), "a\ud800"])
def test_any_other_nonce_is_invalid(nonce):
    error = refusal({"type": "ping", "nonce": nonce})
    assert (error.code, error.ref) == (Code.INVALID, None)


@pytest.mark.parametrize("text", ['{"type": "ping", "nonce": NaN}', '{"type": "ping", "nonce": Infinity}',
                                  '{"type": "ping", "nonce": 1e400}'])
def test_a_nonce_that_is_not_json_is_invalid_never_echoed(text):
    assert refusal(text).code == Code.INVALID


def test_frame_text_refuses_to_write_anything_but_strict_json():
    for value in [float("nan"), float("inf"), float("-inf")]:
        with pytest.raises(ValueError):
            protocol.frame_text(protocol.pong_frame(value))
    assert protocol.frame_text({"type": "pong", "nonce": 1}) == '{"type":"pong","nonce":1}'


# ---- hostile clients: frame size (the auth frame's own limit) ----------------------------------

def test_frame_too_large_counts_utf8_bytes():
    assert not protocol.frame_too_large("", 0)
    assert not protocol.frame_too_large("x" * 10, 10)
    assert protocol.frame_too_large("x" * 11, 10)
    assert not protocol.frame_too_large("\u20ac" * 3, 9)  # 3 bytes each
    assert protocol.frame_too_large("\u20ac" * 4, 11)
    assert protocol.frame_too_large("\U0001f600" * 3, 11)  # 4 bytes each
    assert not protocol.frame_too_large("\U0001f600" * 3, 12)
    assert protocol.frame_too_large("x" * 100_000, 65_536)


def test_a_70_kib_frame_padded_around_a_valid_auth_is_too_large():
    auth = json.dumps({"type": "auth", "token": "header.payload.signature", "since": 3})
    limit = 64 * 1024
    for padded in [" " * 35_000 + auth + " " * 35_000,
                   auth[:-1] + ', "pad": "' + "x" * (70 * 1024) + '"}',
                   auth[:-1] + ', "pad": "' + "\u20ac" * (24 * 1024) + '"}']:  # 72 KiB in 24 Ki chars
        assert protocol.frame_too_large(padded, limit)
        with pytest.raises(FrameError) as caught:
            parse_client_frame(padded, MAX_BODY, max_frame_bytes=limit)
        assert (caught.value.code, caught.value.ref) == (Code.TOO_LARGE, None)
        # Without the limit the padding is ignored: the size check is the caller's (or max_frame_bytes).
        assert parse_client_frame(padded, MAX_BODY) == AuthFrame(token="header.payload.signature", since=3)
    assert not protocol.frame_too_large(auth, 4096)
    assert parse_client_frame(auth, MAX_BODY, max_frame_bytes=4096) == AuthFrame("header.payload.signature", 3)


def test_the_old_positional_signature_still_works():
    assert parse_client_frame('{"type": "ack", "cursor": 1}', MAX_BODY) == AckFrame(cursor=1)


# ---- hostile clients: identifiers never pass with whitespace or lookalikes ---------------------

WHITESPACE_AND_LOOKALIKES = ["\n", "\r\n", " ", "\t", "\x0b", "\x0c", "\u00a0", "\u2028", "\u200b", "\x00"]


@pytest.mark.parametrize("user_id", ["alice\n", "\nalice", "alice ", " alice", "al ice", "alice\r\n", "alice\t",
                                     "\u0430lice",  # Cyrillic a
                                     "alic\u0435",  # Cyrillic e
                                     "\uff41lice",  # fullwidth a
                                     "alice\u200b", "alice\u00a0", "\u212alice", "x" * 64 + "\n"])
def test_user_ids_with_whitespace_or_lookalikes_are_invalid(user_id):
    with pytest.raises(Invalid):
        protocol.validate_user_id(user_id)
    with pytest.raises(Invalid):
        protocol.validate_members(["bob", user_id], max_members=5)


@pytest.mark.parametrize("suffix", WHITESPACE_AND_LOOKALIKES)
def test_conversation_ids_with_whitespace_are_invalid_everywhere(suffix):
    for conversation_id in ["c_abc" + suffix, suffix + "c_abc", "c_" + suffix + "abc"]:
        with pytest.raises(Invalid):
            protocol.validate_conversation_id(conversation_id)
        for frame in [send(conversation_id=conversation_id),
                      {"type": "read", "conversation_id": conversation_id, "seq": 1},
                      {"type": "typing", "conversation_id": conversation_id}]:
            assert refusal(frame).code == Code.INVALID


@pytest.mark.parametrize("conversation_id", ["c_abc\n", "\u0441_abc", "c_\u0430bc", "c_abc\u200b", "c\uff3fabc"])
def test_conversation_id_lookalikes_are_invalid(conversation_id):
    with pytest.raises(Invalid):
        protocol.validate_conversation_id(conversation_id)


def test_every_identifier_pattern_is_used_with_fullmatch():
    """`match` would accept a prefix and `$` a trailing newline: protocol.py checks identifiers
    with fullmatch only (and searches only for characters it refuses)."""
    import inspect
    import re

    source = inspect.getsource(protocol)
    uses = re.findall(r"\b([A-Z_]+_RE)\.(\w+)\(", source)
    assert uses, "no pattern uses found"
    for name, method in uses:
        if name in ("UNSTORABLE_TEXT_RE", "LONE_SURROGATE_RE"):
            assert method == "search", (name, method)
        else:
            assert method == "fullmatch", (name, method)
    assert "$" not in protocol.USER_ID_RE.pattern + protocol.CONVERSATION_ID_RE.pattern
    assert not protocol.USER_ID_RE.flags & re.IGNORECASE  # IGNORECASE would let in the Kelvin sign


def test_a_long_unknown_type_is_not_echoed():
    error = refusal({"type": "x" * 10_000})
    assert error.message == "unknown frame type"
    assert "'subscribe'" in refusal({"type": "subscribe"}).message
