"""Access tokens: JWT HS256 signed with the platform secret (PROTOCOL.md "Identity")."""

from __future__ import annotations

import dataclasses
import time

import jwt

from .errors import Unauthorized
from .protocol import validate_user_id

ALGORITHM = "HS256"
DEFAULT_TOKEN_TTL_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    region: str


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
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    user_id = claims.get("sub")
    try:
        validate_user_id(user_id)
    except Exception:
        raise Unauthorized("token subject is not a valid user_id") from None
    region = claims.get("region") or default_region
    if region not in regions:
        raise Unauthorized(f"unknown region {region!r}")
    return Identity(user_id=user_id, region=region)
