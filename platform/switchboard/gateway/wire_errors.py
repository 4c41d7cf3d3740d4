"""Where domain errors meet the wire: HTTP statuses and WebSocket close codes (PROTOCOL.md)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from switchboard.errors import Code, SwitchboardError

HTTP_STATUS = {
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.NOT_FOUND: 404,
    Code.INVALID: 400,
    Code.TOO_LARGE: 413,
    Code.RATE_LIMITED: 429,
    Code.OVERLOADED: 503,
    Code.INTERNAL: 500,
}

# PROTOCOL.md's close codes, and the ones this platform adds (documented in docs/SECURITY.md
# and the README): each tells the client what to do next.
CLOSE_UNAUTHORIZED = 4001  # bad, missing or expired token: get a fresh one
CLOSE_POLICY = 4008  # flooding past a rate limit, or too many sockets for this user
CLOSE_TOO_LARGE = 1009  # a frame over the limit
CLOSE_GOING_AWAY = 1001  # drain or shutdown: reconnect with since
CLOSE_TOO_SLOW = 4009  # the client did not read its frames fast enough: reconnect with since
CLOSE_TRY_AGAIN_LATER = 1013  # too many sockets waiting to authenticate, or the replica full: retry after a backoff


def error_body(error: SwitchboardError) -> dict:
    return {"error": error.to_wire()}


def error_response(error: SwitchboardError, status: int | None = None) -> JSONResponse:
    headers = {}
    retry_after_ms = error.extra.get("retry_after_ms")
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, -(-int(retry_after_ms) // 1000)))
    return JSONResponse(error_body(error), status_code=status or HTTP_STATUS[error.code], headers=headers)
