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

CLOSE_UNAUTHORIZED = 4001
CLOSE_POLICY = 4008
CLOSE_TOO_LARGE = 1009
CLOSE_GOING_AWAY = 1001


def error_body(error: SwitchboardError) -> dict:
    return {"error": error.to_wire()}


def error_response(error: SwitchboardError, status: int | None = None) -> JSONResponse:
    headers = {}
    retry_after_ms = error.extra.get("retry_after_ms")
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, -(-int(retry_after_ms) // 1000)))
    return JSONResponse(error_body(error), status_code=status or HTTP_STATUS[error.code], headers=headers)
