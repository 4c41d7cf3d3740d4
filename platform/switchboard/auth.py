"""Access tokens: JWT HS256 signed with the platform secret (PROTOCOL.md "Identity").

A token is hostile input: whatever is wrong with it, verify_token raises Unauthorized with a
message of our own (PyJWT's texts never reach a client), never anything else.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jwt

from .errors import Unauthorized
from .protocol import USER_ID_RE, validate_user_id

ALGORITHM = "HS256"
DEFAULT_TOKEN_TTL_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    region: str
    # The token's `exp` (seconds since the epoch), so the gateway can close a socket when its token
    # expires; None for an identity not proved by a token. Not compared: the same user in the same
    # region is the same identity whichever token proved it.
    expires_at: float | None = dataclasses.field(default=None, compare=False)


def mint_token(secret: str, user_id: str, region: str | None = None, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
    validate_user_id(user_id)
    claims: dict = {"sub": user_id, "exp": int(time.time()) + int(ttl_s)}
    if region:
        claims["region"] = region
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: object, regions: tuple[str, ...], default_region: str) -> Identity:
    """The identity a token proves, or Unauthorized for any token that is not exactly right."""
    if not isinstance(token, str) or not token:
        raise Unauthorized("missing token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except Exception:  # noqa: BLE001 - PyJWTError, or whatever else a forged token makes PyJWT raise
        raise Unauthorized("invalid token") from None
    if not isinstance(claims, dict):
        raise Unauthorized("invalid token")
    expires_at = _expiry(claims.get("exp"))
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
        raise Unauthorized("token subject is not a valid user_id")
    region = claims.get("region", "")
    if not isinstance(region, str):
        raise Unauthorized("token region is not a string")
    region = region or default_region
    if region not in regions:
        raise Unauthorized("unknown region")
    return Identity(user_id=user_id, region=region, expires_at=expires_at)


def _expiry(exp: object) -> float:
    """The `exp` claim as seconds since the epoch: a JSON number (PyJWT also takes "123" and
    true), finite as a float."""
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise Unauthorized("token expiry is not a number")
    try:
        expires_at = float(exp)
    except OverflowError:
        raise Unauthorized("token expiry is out of range") from None
    if not math.isfinite(expires_at):
        raise Unauthorized("token expiry is out of range")
    return expires_at
