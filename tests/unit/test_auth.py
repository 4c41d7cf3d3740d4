"""Access tokens (switchboard/auth.py): JWT HS256 with `sub`, `exp` and an optional `region`."""

from __future__ import annotations

import time

import jwt
import pytest

from switchboard.auth import Identity, mint_token, verify_token
from switchboard.errors import Invalid, Unauthorized

SECRET = "unit-test-secret-" + "x" * 64  # long enough for HS512 too: no key-length warning
REGIONS = ("local", "eu")


def verify(token: object) -> Identity:
    return verify_token(SECRET, token, REGIONS, default_region="local")


def signed(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def in_an_hour() -> int:
    return int(time.time()) + 3600


def test_mint_then_verify_round_trips_user_and_region():
    assert verify(mint_token(SECRET, "alice", region="eu")) == Identity(user_id="alice", region="eu")


def test_a_token_without_region_gets_the_default_region():
    assert verify(mint_token(SECRET, "bob")) == Identity(user_id="bob", region="local")
    assert verify_token(SECRET, mint_token(SECRET, "bob"), REGIONS, default_region="eu").region == "eu"


def test_minted_claims_carry_sub_and_a_future_exp():
    claims = jwt.decode(mint_token(SECRET, "carol", ttl_s=60), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol"
    assert 0 < claims["exp"] - time.time() <= 60
    assert "region" not in claims


def test_mint_refuses_an_invalid_user_id():
    with pytest.raises(Invalid):
        mint_token(SECRET, "not valid")


def test_an_expired_token_is_unauthorized():
    with pytest.raises(Unauthorized, match="expired"):
        verify(mint_token(SECRET, "alice", ttl_s=-10))


def test_a_token_signed_with_another_secret_is_unauthorized():
    with pytest.raises(Unauthorized):
        verify(mint_token("another-secret-that-is-also-long-enough-for-hs256", "alice"))


def test_a_tampered_token_is_unauthorized():
    header, payload, signature = mint_token(SECRET, "alice").split(".")
    forged_payload = jwt.utils.base64url_encode(b'{"sub":"mallory","exp":9999999999}').decode()
    with pytest.raises(Unauthorized):
        verify(f"{header}.{forged_payload}.{signature}")


def test_another_algorithm_is_unauthorized():
    with pytest.raises(Unauthorized):
        verify(signed({"sub": "alice", "exp": in_an_hour()}, algorithm="HS512"))
    with pytest.raises(Unauthorized):
        verify(jwt.encode({"sub": "alice", "exp": in_an_hour()}, None, algorithm="none"))


@pytest.mark.parametrize("claims", [{"sub": "alice"}, {"exp": 4_000_000_000}])
def test_missing_exp_or_sub_is_unauthorized(claims):
    with pytest.raises(Unauthorized):
        verify(signed(claims))


@pytest.mark.parametrize("sub", ["", "has space", "x" * 65, 42, None, ["alice"]])
def test_a_subject_that_is_not_a_user_id_is_unauthorized(sub):
    with pytest.raises(Unauthorized):
        verify(signed({"sub": sub, "exp": in_an_hour()}))


def test_a_subject_with_a_trailing_newline_is_unauthorized():
    with pytest.raises(Unauthorized):
        verify(signed({"sub": "alice\n", "exp": in_an_hour()}))


def test_an_unknown_region_is_unauthorized():
    with pytest.raises(Unauthorized, match="region"):
        verify(mint_token(SECRET, "alice", region="mars"))


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.b.c", 12345, b"bytes"])
def test_garbage_tokens_are_unauthorized(token):
    with pytest.raises(Unauthorized):
        verify(token)


def test_unauthorized_reaches_the_wire_as_code_unauthorized():
    with pytest.raises(Unauthorized) as caught:
        verify("nope")
    assert caught.value.to_wire()["code"] == "unauthorized"


# ---- the token's expiry ------------------------------------------------------------------------

def test_an_identity_carries_the_tokens_expiry():
    exp = in_an_hour()
    identity = verify(signed({"sub": "alice", "exp": exp}))
    assert identity.expires_at == float(exp) and isinstance(identity.expires_at, float)
    minted = verify(mint_token(SECRET, "bob", ttl_s=60))
    assert 0 < minted.expires_at - time.time() <= 60
    assert verify(signed({"sub": "alice", "exp": exp + 0.5})).expires_at == exp + 0.5


def test_an_identity_not_proved_by_a_token_has_no_expiry_and_expiry_is_not_compared():
    assert Identity("alice", "local").expires_at is None
    assert Identity("alice", "local", expires_at=1.0) == Identity("alice", "local")
    assert hash(Identity("alice", "local", expires_at=1.0)) == hash(Identity("alice", "local"))


@pytest.mark.parametrize("exp", [str(4_000_000_000), "soon", None, [4_000_000_000], {"at": 1}, True, 10**400])
def test_an_exp_that_is_not_a_finite_number_is_unauthorized(exp):
    with pytest.raises(Unauthorized):
        verify(signed({"sub": "alice", "exp": exp}))


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_an_exp_that_is_not_json_is_unauthorized(exp):
    with pytest.raises(Unauthorized):
        verify(raw_signed('{"sub": "alice", "exp": ' + exp + "}"))


# ---- claim types -------------------------------------------------------------------------------

@pytest.mark.parametrize("region", [5, ["eu"], {"eu": 1}, True, None, 1.5])
def test_a_region_claim_that_is_not_a_string_is_unauthorized(region):
    with pytest.raises(Unauthorized, match="region"):
        verify(signed({"sub": "alice", "exp": in_an_hour(), "region": region}))


def test_an_empty_region_claim_means_the_default_region():
    assert verify(signed({"sub": "alice", "exp": in_an_hour(), "region": ""})).region == "local"


@pytest.mark.parametrize("sub", ["alice\n", "\nalice", "alice ", "\u0430lice", "alice\u200b", {"id": "alice"}, 1.5, True])
def test_a_subject_with_whitespace_lookalikes_or_another_type_is_unauthorized(sub):
    with pytest.raises(Unauthorized, match="subject|invalid token"):
        verify(signed({"sub": sub, "exp": in_an_hour()}))


# ---- no text of PyJWT reaches a client ---------------------------------------------------------

OUR_MESSAGES = {"missing token", "token expired", "invalid token", "token subject is not a valid user_id",
                "token expiry is not a number", "token expiry is out of range", "token region is not a string",
                "unknown region"}


def b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def raw_signed(payload: str, header: str = '{"alg": "HS256", "typ": "JWT"}', secret: str = SECRET) -> str:
    """A token over exactly these JSON texts (PyJWT's encoder would refuse or rewrite some)."""
    import hashlib
    import hmac

    signing_input = b64(header.encode()) + "." + b64(payload.encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


HOSTILE_TOKENS = [
    "not-a-jwt", "a.b.c", "a.b", "...", "a" * 10_000, "\u00e9.\u00e9.\u00e9", "\x00", "eyJ.eyJ.eyJ",
    mint_token("another-secret-that-is-also-long-enough-for-hs256", "alice"),
    mint_token(SECRET, "alice", ttl_s=-10),
    mint_token(SECRET, "alice", region="mars"),
    signed({"sub": "alice", "exp": in_an_hour()}, algorithm="HS512"),
    jwt.encode({"sub": "alice", "exp": in_an_hour()}, None, algorithm="none"),
    signed({"sub": "alice", "exp": in_an_hour(), "nbf": in_an_hour()}),
    signed({"sub": "alice", "exp": in_an_hour(), "iat": "yesterday"}),
    signed({"sub": "alice", "exp": in_an_hour(), "aud": "someone"}),
    signed({"sub": "alice"}),
    raw_signed("[" * 10_000 + "]" * 10_000),
    raw_signed('{"sub": "alice", "exp": 4000000000, "x": ' + "[" * 10_000 + "]" * 10_000 + "}"),
    raw_signed('{"sub": "alice", "exp": 4000000000}', header="[" * 10_000 + "]" * 10_000),
    raw_signed('{"sub": "alice", "exp": 4000000000}', header='{"alg": "HS256", "kid": 5}'),
    raw_signed('{"sub": "alice", "exp": 4000000000}', header='{"alg": ["HS256"]}'),
    raw_signed('{"sub": "alice", "exp": ' + "9" * 5000 + "}"),
    raw_signed('{"sub": "alice", "exp": 4000000000}', header='{"alg": "HS256", "x": ' + "1" * 5000 + "}"),
    raw_signed("[1, 2]"), raw_signed('"alice"'), raw_signed("null"), raw_signed("{"),
    b64(b'{"alg":"HS256"}') + "." + b64(b"\xff\xfe") + ".sig",
]


@pytest.mark.parametrize("token", HOSTILE_TOKENS)
def test_every_refusal_is_unauthorized_with_a_message_of_our_own(token):
    with pytest.raises(Unauthorized) as caught:
        verify(token)
    assert type(caught.value) is Unauthorized
    assert caught.value.message in OUR_MESSAGES
    # PyJWT's exception is not chained in either (a traceback shown to anyone names only ours).
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
