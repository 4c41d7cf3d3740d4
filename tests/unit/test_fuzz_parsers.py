"""Property-based tests of everything that parses client input (protocol.py and auth.py).

Every input is either accepted, and the value then holds the protocol's invariants (ids fullmatch
their patterns, integers fit 64 bits, strings their length limits, a pong is strict JSON), or
refused with a SwitchboardError whose code is one of the protocol's: never any other exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from switchboard import protocol
from switchboard.auth import Identity, mint_token, verify_token
from switchboard.errors import Code, SwitchboardError
from switchboard.protocol import (
    INT64_MAX,
    INT64_MIN,
    AckFrame,
    AuthFrame,
    FrameError,
    PingFrame,
    ReadFrame,
    SendFrame,
    TypingFrame,
)

# No example database: the tests must not write into the working tree.
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PROTOCOL_CODES = {Code.INVALID, Code.TOO_LARGE, Code.UNAUTHORIZED}
MESSAGE_MAX = 200  # refusals are our own short sentences, never an echo of the input
MAX_BODY = 64
MAX_MEMBERS = 5
SECRET = "fuzz-secret-" + "x" * 64
REGIONS = ("local", "eu")


def outcome(call):
    """(value, None) or (None, error); any exception but a protocol SwitchboardError fails."""
    try:
        return call(), None
    except SwitchboardError as error:
        assert error.code in PROTOCOL_CODES, error
        assert isinstance(error.message, str) and len(error.message) <= MESSAGE_MAX, error.message
        assert error.to_wire()["code"] == error.code.value
        return None, error


def _refuse_constant(name):
    raise AssertionError(f"{name} is not JSON")


def strict_loads(text: str):
    """The strictest reading of JSON a client may use: no NaN/Infinity, no float overflow."""
    def finite(number: str) -> float:
        value = float(number)
        assert math.isfinite(value), number
        return value
    return json.loads(text, parse_constant=_refuse_constant, parse_float=finite)


def depth_of(value) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def holds_only_strict_json(value) -> None:
    """Every float finite, every int within the digit limit, every key a string."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            assert all(isinstance(key, str) for key in node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, float):
            assert math.isfinite(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            assert len(str(abs(node))) <= protocol.JSON_INT_MAX_DIGITS
        else:
            assert node is None or isinstance(node, (bool, str)), type(node)
    json.dumps(value, allow_nan=False)


# ---- strategies --------------------------------------------------------------------------------

class Raw:
    """A JSON token written as is: NaN, 1e400, an integer of 4301 digits, 1.0 where an int belongs."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:20]!r})"


RAW_TOKENS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E999", "2e-400",
                              "9" * 4301, "-" + "9" * 4301, "9" * 4300, "1.0", "1e3", "-0", "0.0", "-0.0",
                              str(2**63), str(2**64), str(INT64_MAX), str(INT64_MIN - 1)]).map(Raw)

# Any character, lone surrogates included (st.characters() leaves them out by default).
CHARACTERS = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from("\n\r\t \x00\u00a0\u2028"))
TEXT = st.text(CHARACTERS, max_size=40)
HUGE_INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, INT64_MAX, INT64_MAX + 1, INT64_MIN, INT64_MIN - 1, 2**64, 10**30, 10**4299]),
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.one_of(st.none(), st.booleans(), HUGE_INTS, FLOATS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)),
    max_leaves=20,
)
# Trees that may hold Raw tokens: rendered to text by render().
RAW_TREES = st.recursive(
    st.one_of(SCALARS, RAW_TOKENS),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)),
    max_leaves=20,
)

USER_IDS = st.from_regex(protocol.USER_ID_RE, fullmatch=True)
CONVERSATION_IDS = st.from_regex(protocol.CONVERSATION_ID_RE, fullmatch=True)
SPOILERS = st.sampled_from(["\n", "\r\n", " ", "\t", "\u00a0", "\u200b", "\u0430", "\uff41", "\x00", "\ud800", "é"])


def spoiled(ids):
    """A valid id with whitespace or a lookalike before, inside or after it."""
    return st.tuples(ids, SPOILERS, st.integers(min_value=0, max_value=1000)).map(
        lambda parts: parts[0][: parts[2] % (len(parts[0]) + 1)] + parts[1] + parts[0][parts[2] % (len(parts[0]) + 1):])


ANY_USER_ID = st.one_of(USER_IDS, spoiled(USER_IDS), TEXT, JSON_VALUES)
ANY_CONVERSATION_ID = st.one_of(CONVERSATION_IDS, spoiled(CONVERSATION_IDS), TEXT, JSON_VALUES)
ANY_INT = st.one_of(st.integers(min_value=0, max_value=INT64_MAX), HUGE_INTS, RAW_TOKENS, JSON_VALUES)
ANY_TEXT = st.one_of(TEXT, st.text(max_size=200), JSON_VALUES)
ANY_NONCE = st.one_of(st.none(), st.text(max_size=130), st.text(CHARACTERS, max_size=5), HUGE_INTS, RAW_TOKENS, JSON_VALUES)


def render(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(key) + ":" + render(item) for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(item) for item in value) + "]"
    return json.dumps(value)


def frame(kind, **fields):
    """A frame of one type whose fields may each be absent or of any type."""
    return st.fixed_dictionaries({"type": kind}, optional=fields)


FRAMES = st.one_of(
    frame(st.just("send"), conversation_id=ANY_CONVERSATION_ID, client_msg_id=ANY_TEXT, body=ANY_TEXT),
    frame(st.just("send"), conversation_id=CONVERSATION_IDS, client_msg_id=st.text(min_size=1, max_size=64),
          body=st.text(min_size=1, max_size=MAX_BODY)),
    frame(st.just("ack"), cursor=ANY_INT),
    frame(st.just("read"), conversation_id=ANY_CONVERSATION_ID, seq=ANY_INT),
    frame(st.just("typing"), conversation_id=ANY_CONVERSATION_ID),
    frame(st.just("ping"), nonce=ANY_NONCE),
    frame(st.just("auth"), token=ANY_TEXT, since=ANY_INT),
    frame(st.one_of(st.sampled_from(protocol.CLIENT_FRAME_TYPES), TEXT, JSON_VALUES),
          client_msg_id=ANY_TEXT, conversation_id=ANY_CONVERSATION_ID, cursor=ANY_INT, seq=ANY_INT,
          nonce=ANY_NONCE, token=ANY_TEXT, since=ANY_INT, body=ANY_TEXT),
)
NESTING = st.tuples(st.sampled_from(["[", '{"a":', '{"type":"ping","x":']), st.integers(min_value=1, max_value=3000)).map(
    lambda parts: parts[0] * parts[1] + ("1" if parts[0] != "[" else "")
    + ("]" if parts[0] == "[" else "}") * parts[1])


# ---- the invariants of an accepted value --------------------------------------------------------

def check_int64(value, minimum=0):
    assert type(value) is int and minimum <= value <= INT64_MAX


def check_stored_text(value: str):
    assert isinstance(value, str) and not protocol.UNSTORABLE_TEXT_RE.search(value)
    value.encode("utf-8")  # no lone surrogate


def check_frame(parsed, max_body_bytes=MAX_BODY):
    if isinstance(parsed, SendFrame):
        assert protocol.CONVERSATION_ID_RE.fullmatch(parsed.conversation_id)
        assert 1 <= len(parsed.client_msg_id) <= protocol.CLIENT_MSG_ID_MAX
        check_stored_text(parsed.client_msg_id)
        assert parsed.body and len(parsed.body.encode("utf-8")) <= max_body_bytes
        check_stored_text(parsed.body)
    elif isinstance(parsed, AckFrame):
        check_int64(parsed.cursor)
    elif isinstance(parsed, ReadFrame):
        assert protocol.CONVERSATION_ID_RE.fullmatch(parsed.conversation_id)
        check_int64(parsed.seq)
    elif isinstance(parsed, TypingFrame):
        assert protocol.CONVERSATION_ID_RE.fullmatch(parsed.conversation_id)
    elif isinstance(parsed, PingFrame):
        nonce = parsed.nonce
        assert nonce is None or (isinstance(nonce, str) and len(nonce) <= protocol.NONCE_MAX) or (
            type(nonce) is int and INT64_MIN <= nonce <= INT64_MAX)
        text = protocol.frame_text(protocol.pong_frame(nonce))
        text.encode("utf-8")
        assert strict_loads(text) == {"type": "pong", "nonce": nonce}
        assert protocol.parse_json(text) == {"type": "pong", "nonce": nonce}
    elif isinstance(parsed, AuthFrame):
        assert isinstance(parsed.token, str)
        if parsed.since is not None:
            check_int64(parsed.since)
    else:
        raise AssertionError(f"not a client frame: {parsed!r}")


def check_frame_refusal(error):
    assert isinstance(error, FrameError)
    assert error.ref is None or isinstance(error.ref, str)
    # The error frame the gateway writes back is strict JSON too.
    text = protocol.frame_text(protocol.error_frame(error.code.value, error.message, error.ref))
    assert strict_loads(text)["code"] in {code.value for code in PROTOCOL_CODES}


def parse_frame_text(text, **options):
    parsed, error = outcome(lambda: protocol.parse_client_frame(text, MAX_BODY, **options))
    if error is None:
        check_frame(parsed)
    else:
        check_frame_refusal(error)
    return parsed, error


# ---- parse_client_frame ------------------------------------------------------------------------

@FUZZ
@given(FRAMES)
def test_frames_of_every_type_with_fields_of_any_type(data):
    parse_frame_text(render(data))


@FUZZ
@given(st.one_of(FRAMES, RAW_TREES, st.fixed_dictionaries({"type": st.sampled_from(protocol.CLIENT_FRAME_TYPES)},
                                                         optional={"cursor": RAW_TOKENS, "seq": RAW_TOKENS,
                                                                   "since": RAW_TOKENS, "nonce": RAW_TOKENS,
                                                                   "token": RAW_TOKENS, "x": RAW_TREES})))
def test_frames_holding_non_json_numbers(tree):
    parse_frame_text(render(tree))


@FUZZ
@given(st.one_of(TEXT, st.text(), NESTING))
@example("[" * 10_000 + "]" * 10_000)
@example('{"type":"ping","nonce":1e400}')
def test_frames_of_random_text(text):
    parse_frame_text(text)


@FUZZ
@given(FRAMES, st.integers(min_value=0, max_value=400), st.sampled_from([" ", "\u20ac", "\U0001f600"]))
def test_the_frame_limit_refuses_exactly_the_frames_over_it(data, limit, padding):
    text = render(data)[:-1] + ',"pad":"' + padding * (limit // 8) + '"}'
    over = len(text.encode("utf-8", errors="surrogatepass")) > limit
    assert protocol.frame_too_large(text, limit) == over
    _, error = parse_frame_text(text, max_frame_bytes=limit)
    if over:
        assert error is not None and error.code == Code.TOO_LARGE and error.ref is None


# ---- parse_json and parse_json_body ------------------------------------------------------------

def check_json(value, max_depth):
    holds_only_strict_json(value)
    assert depth_of(value) <= max_depth


@FUZZ
@given(JSON_VALUES, st.integers(min_value=0, max_value=6))
def test_parse_json_reads_every_strict_json_value_within_the_depth(value, max_depth):
    text = json.dumps(value, allow_nan=False)  # ASCII: lone surrogates are written as escapes
    parsed, error = outcome(lambda: protocol.parse_json(text, max_depth))
    if depth_of(value) <= max_depth:
        assert error is None and parsed == value
        assert protocol.parse_json(text.encode(), max_depth) == value
    else:
        assert error is not None and error.code == Code.INVALID and "deeper" in error.message


@FUZZ
@given(st.one_of(RAW_TREES, NESTING.map(Raw)), st.integers(min_value=1, max_value=40))
def test_parse_json_of_any_tokens(tree, max_depth):
    text = render(tree)
    for raw in (text, text.encode("utf-8", errors="surrogatepass")):
        parsed, error = outcome(lambda raw=raw: protocol.parse_json(raw, max_depth))
        if error is None:
            check_json(parsed, max_depth)
        else:
            assert error.code == Code.INVALID


@FUZZ
@given(st.one_of(st.text(), TEXT, st.binary(), st.binary(min_size=1, max_size=8).map(lambda b: b'{"a":"' + b + b'"}')))
def test_parse_json_and_parse_json_body_of_random_text_and_bytes(raw):
    parsed, error = outcome(lambda: protocol.parse_json(raw))
    if error is None:
        check_json(parsed, protocol.MAX_JSON_DEPTH)
    else:
        assert error.code == Code.INVALID
    body, body_error = outcome(lambda: protocol.parse_json_body(raw))
    if body_error is None:
        assert isinstance(body, dict)
        check_json(body, protocol.MAX_JSON_DEPTH)
        assert body == ({} if len(raw) == 0 else parsed)
    else:
        assert body_error.code == Code.INVALID


@FUZZ
@given(st.one_of(RAW_TREES, JSON_VALUES.map(lambda value: Raw(json.dumps(value)))))
def test_parse_json_body_of_json_values(tree):
    raw = render(tree).encode("utf-8", errors="surrogatepass")
    body, error = outcome(lambda: protocol.parse_json_body(raw))
    if error is None:
        assert isinstance(body, dict)
        check_json(body, protocol.MAX_JSON_DEPTH)


# ---- validate_query_int ------------------------------------------------------------------------

QUERY_VALUES = st.one_of(
    st.none(), TEXT, st.text(max_size=25),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.integers().map(str), HUGE_INTS.map(str),
    st.tuples(st.sampled_from(["", " ", "+", "-", "\t", "\n", "0x"]), st.integers(min_value=0, max_value=10**20),
              st.sampled_from(["", " ", "\n", "_0", ".0", "e3"])).map(lambda parts: f"{parts[0]}{parts[1]}{parts[2]}"),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=5),  # Unicode digits
)


@FUZZ
@given(QUERY_VALUES, st.integers(min_value=0, max_value=3))
@example(str(INT64_MAX), 0)
@example(str(INT64_MAX + 1), 0)
@example("1_0", 0)
@example("\u0663", 0)
def test_validate_query_int(raw, minimum):
    value, error = outcome(lambda: protocol.validate_query_int(raw, "after", minimum))
    plain = isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19
    if raw is None:
        assert (value, error) == (None, None)
    elif plain and minimum <= int(raw) <= INT64_MAX:
        assert error is None and value == int(raw)
    else:
        assert error is not None and error.code == Code.INVALID and "after" in error.message
    if value is not None:
        check_int64(value, minimum)


# ---- field validators --------------------------------------------------------------------------

@FUZZ
@given(st.one_of(JSON_VALUES, st.lists(ANY_USER_ID, max_size=8), st.lists(USER_IDS, max_size=8)))
def test_validate_members(value):
    members, error = outcome(lambda: protocol.validate_members(value, MAX_MEMBERS))
    if error is None:
        assert isinstance(members, list) and len(members) <= MAX_MEMBERS
        assert len(set(members)) == len(members)
        assert all(isinstance(member, str) and protocol.USER_ID_RE.fullmatch(member) for member in members)
    else:
        assert error.code == Code.INVALID


@FUZZ
@given(st.one_of(JSON_VALUES, st.text(max_size=250), TEXT))
def test_validate_title(value):
    title, error = outcome(lambda: protocol.validate_title(value))
    if error is None:
        assert isinstance(title, str) and len(title) <= protocol.TITLE_MAX
        check_stored_text(title)
    else:
        assert error.code == Code.INVALID


@FUZZ
@given(st.one_of(JSON_VALUES, st.text(max_size=MAX_BODY + 8), TEXT), st.integers(min_value=0, max_value=MAX_BODY))
def test_validate_body(value, max_body_bytes):
    body, error = outcome(lambda: protocol.validate_body(value, max_body_bytes))
    if error is None:
        assert isinstance(body, str) and body
        assert len(body.encode("utf-8")) <= max_body_bytes
        check_stored_text(body)
    else:
        assert error.code in (Code.INVALID, Code.TOO_LARGE)


@FUZZ
@given(ANY_USER_ID)
@example("alice\n")
@example("\nalice")
@example("alice ")
@example("\u0430lice")
def test_validate_user_id(value):
    user_id, error = outcome(lambda: protocol.validate_user_id(value))
    if error is None:
        assert isinstance(user_id, str) and protocol.USER_ID_RE.fullmatch(user_id)
        assert user_id.isascii() and user_id == user_id.strip() and 1 <= len(user_id) <= 64
    else:
        assert error.code == Code.INVALID


@FUZZ
@given(ANY_CONVERSATION_ID)
@example("c_abc\n")
@example("c_abc ")
@example("\u0441_abc")
def test_validate_conversation_id(value):
    conversation_id, error = outcome(lambda: protocol.validate_conversation_id(value))
    if error is None:
        assert isinstance(conversation_id, str) and protocol.CONVERSATION_ID_RE.fullmatch(conversation_id)
        assert conversation_id.isascii() and conversation_id == conversation_id.strip()
    else:
        assert error.code == Code.INVALID


# ---- verify_token ------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: str, header: str = '{"alg":"HS256","typ":"JWT"}', secret: str = SECRET) -> str:
    signing_input = b64(header.encode("utf-8", errors="surrogatepass")) + "." + b64(
        payload.encode("utf-8", errors="surrogatepass"))
    return signing_input + "." + b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


def check_identity(identity, before: float):
    assert isinstance(identity, Identity)
    assert protocol.USER_ID_RE.fullmatch(identity.user_id)
    assert identity.region in REGIONS
    assert isinstance(identity.expires_at, float) and math.isfinite(identity.expires_at)
    assert identity.expires_at > before - 1


def verify(token):
    before = time.time()
    identity, error = outcome(lambda: verify_token(SECRET, token, REGIONS, "local"))
    if error is None:
        check_identity(identity, before)
    else:
        assert error.code == Code.UNAUTHORIZED
    return identity, error


SEGMENTS = st.one_of(st.binary(max_size=40).map(b64), st.text(max_size=20), RAW_TREES.map(render).map(
    lambda text: b64(text.encode("utf-8", errors="surrogatepass"))))


@FUZZ
@given(st.one_of(st.text(), TEXT, st.binary(), JSON_VALUES,
                 st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join)))
def test_verify_token_of_random_text_bytes_and_segments(token):
    verify(token)


EXPIRIES = st.one_of(
    st.integers(min_value=int(time.time()) + 600, max_value=int(time.time()) + 10**6),
    st.floats(min_value=time.time() + 600, max_value=1e12),
    st.integers(max_value=int(time.time()) - 10),
    HUGE_INTS, FLOATS, RAW_TOKENS, JSON_VALUES,
    st.integers(min_value=int(time.time()) + 600, max_value=int(time.time()) + 10**6).map(str),
)
FUTURE = st.integers(min_value=int(time.time()) + 600, max_value=int(time.time()) + 10**6)
REGION_CLAIMS = st.one_of(st.sampled_from(REGIONS + ("", "mars", "EU", "eu\n")), JSON_VALUES)
ODD_CLAIMS = {
    "nbf": st.one_of(HUGE_INTS, RAW_TOKENS, JSON_VALUES),
    "iat": st.one_of(HUGE_INTS, RAW_TOKENS, JSON_VALUES),
    "aud": JSON_VALUES, "iss": JSON_VALUES, "jti": JSON_VALUES, "x": RAW_TREES,
}
CLAIMS = st.one_of(
    # Nearly right: each of sub, exp and region usually valid, sometimes anything.
    st.fixed_dictionaries({"sub": st.one_of(USER_IDS, ANY_USER_ID), "exp": st.one_of(FUTURE, EXPIRIES)},
                          optional={"region": st.one_of(st.sampled_from(REGIONS), REGION_CLAIMS)}),
    # Anything: any claim may be absent, of any type, or not JSON at all.
    st.fixed_dictionaries({}, optional={"sub": ANY_USER_ID, "exp": EXPIRIES, "region": REGION_CLAIMS, **ODD_CLAIMS}),
)
GOOD_HEADERS = ('{"alg":"HS256","typ":"JWT"}', '{"alg":"HS256"}')
HEADERS = st.one_of(
    st.sampled_from(GOOD_HEADERS),
    st.fixed_dictionaries({"alg": st.one_of(st.sampled_from(["HS256", "none", "HS512", "RS256"]), JSON_VALUES)},
                          optional={"typ": JSON_VALUES, "kid": JSON_VALUES, "crit": JSON_VALUES,
                                    "b64": JSON_VALUES, "x": RAW_TREES}).map(render),
    RAW_TREES.map(render),
)


@FUZZ
@given(CLAIMS, st.one_of(st.sampled_from(GOOD_HEADERS), HEADERS))
def test_verify_token_of_random_claims_signed_with_the_right_key(claims, header):
    token = sign(render(claims), header)
    identity, error = verify(token)
    sub, exp, region = claims.get("sub"), claims.get("exp"), claims.get("region", "")
    well_formed = (
        header in GOOD_HEADERS
        and isinstance(sub, str) and protocol.USER_ID_RE.fullmatch(sub)
        and type(exp) in (int, float) and time.time() + 60 < exp < 1e300
        and region in REGIONS + ("",)
        and set(claims) <= {"sub", "exp", "region"}
    )
    if well_formed:
        assert error is None, error
        assert identity == Identity(sub, region or "local") and identity.expires_at == float(exp)


@FUZZ
@given(USER_IDS, st.sampled_from([None, *REGIONS]), st.integers(min_value=60, max_value=10**6))
def test_minted_tokens_verify(user_id, region, ttl_s):
    identity, error = verify(mint_token(SECRET, user_id, region=region, ttl_s=ttl_s))
    assert error is None and identity.user_id == user_id and identity.region == (region or "local")


@pytest.mark.parametrize("token", ["", None, b"x", 5])
def test_no_token_is_unauthorized(token):
    assert verify(token)[1].message == "missing token"
