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
