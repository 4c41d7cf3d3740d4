"""One error tree whose codes reach the wire.

    SwitchboardError            code "internal"   (a bug; nothing half-done is visible)
     +-- Unauthorized           "unauthorized"    no, bad or expired token
     +-- Forbidden              "forbidden"       not a member, or not allowed
     |    +-- TooManySockets                          a user over its socket cap (close 4008)
     +-- NotFound               "not_found"       no such conversation or user
     +-- Invalid                "invalid"         malformed frame or body, unknown type, bad field
     +-- TooLarge               "too_large"       body over the limit
     +-- RateLimited            "rate_limited"    over the per-user rate; carries retry_after_ms
     +-- Overloaded             "overloaded"      shedding load; nothing was committed
          +-- Moved                                   the key's owner changed (a reshard): the
                                                      gateway re-routes it, a client never sees it
                                                      unless its time runs out first

Actors raise these; only gateway/ maps them to HTTP statuses and WebSocket close codes. They are
plain picklable exceptions so they cross Ray calls unchanged.
"""

from __future__ import annotations

from enum import Enum


class Code(str, Enum):
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


class SwitchboardError(Exception):
    code: Code = Code.INTERNAL

    def __init__(self, message: str = "internal error", **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.extra))

    def to_wire(self) -> dict:
        return {"code": self.code.value, "message": self.message, **self.extra}


def _rebuild(cls, message, extra):
    return cls(message, **extra)


class Unauthorized(SwitchboardError):
    code = Code.UNAUTHORIZED


class Forbidden(SwitchboardError):
    code = Code.FORBIDDEN


class TooManySockets(Forbidden):
    """A socket beyond the user's cap (Settings.sockets_per_user): the gateway closes it 4008."""


class NotFound(SwitchboardError):
    code = Code.NOT_FOUND


class Invalid(SwitchboardError):
    code = Code.INVALID


class TooLarge(SwitchboardError):
    code = Code.TOO_LARGE


class RateLimited(SwitchboardError):
    code = Code.RATE_LIMITED

    def __init__(self, message: str = "rate limited", retry_after_ms: int = 0, **extra):
        super().__init__(message, retry_after_ms=int(retry_after_ms), **extra)


class Overloaded(SwitchboardError):
    code = Code.OVERLOADED


class Moved(Overloaded):
    """Asked of a shard that no longer owns the key (a reshard moved it), or whose placement the
    database fenced off. Nothing was committed. `epoch` is the placement the shard works from:
    a gateway with an older one learns the new placement before it re-routes."""

    def __init__(self, region: str, epoch: int, message: str = "the shard of this item changed; retry"):
        super().__init__(message)
        self.region = region
        self.epoch = epoch

    def __reduce__(self):  # the extra constructor arguments must survive pickling by Ray
        return (Moved, (self.region, self.epoch, self.message))

