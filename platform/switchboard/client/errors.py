"""What the SDK raises.

    ClientError                 anything this SDK raises on purpose
     +-- ApiError               the platform answered with an error (HTTP or an `error` frame);
     |                          `code` is a PROTOCOL.md code: unauthorized, forbidden, not_found,
     |                          invalid, too_large, rate_limited, overloaded, internal
     +-- ConnectError           no session: the socket did not open, or no `ready` came in time
     +-- SessionClosed          the WebSocket closed; `code` and `reason` are the close frame's
     +-- NotConnected           a frame that only makes sense live (read, typing, ping) with no session
     +-- ClientClosed           the Client was closed (or gave up) before the call could complete

ApiError.retryable says whether the same call may succeed later unchanged (rate_limited,
overloaded); a send retried with its client_msg_id never creates a second message.
"""

from __future__ import annotations

RETRYABLE_CODES = frozenset({"rate_limited", "overloaded"})

# WebSocket close codes of PROTOCOL.md.
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_LARGE = 1009
CLOSE_UNAUTHORIZED = 4001
CLOSE_POLICY = 4008


class ClientError(Exception):
    """Base of every error the SDK raises on purpose."""


class ApiError(ClientError):
    """An error answer: `{"error": {...}}` over HTTP, or an `error` frame over the WebSocket."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 retry_after_ms: int | None = None, ref: str | None = None):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status  # the HTTP status; None for a WebSocket `error` frame
        self.retry_after_ms = retry_after_ms
        self.ref = ref  # the client_msg_id an `error` frame answers, if any

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @classmethod
    def from_frame(cls, frame: dict) -> ApiError:
        return cls(str(frame.get("code") or "internal"), str(frame.get("message") or ""),
                   retry_after_ms=_int_or_none(frame.get("retry_after_ms")), ref=frame.get("ref"))


class ConnectError(ClientError):
    """The WebSocket could not be opened, or the session did not become ready."""


class SessionClosed(ClientError):
    """The WebSocket closed. code 4001 means the token was refused; 1001 asks for a reconnect."""

    def __init__(self, code: int | None, reason: str | None = None):
        super().__init__(f"connection closed ({code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason or ""


class NotConnected(ClientError):
    """No live session right now (the Client is reconnecting)."""


class ClientClosed(ClientError):
    """The Client was closed, or stopped for good (see its `failure`), before this completed."""


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
