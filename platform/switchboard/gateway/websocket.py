"""The WebSocket endpoint /v1/ws: authenticate, open a session, pump client frames into it."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from switchboard import protocol
from switchboard.auth import Identity, verify_token
from switchboard.errors import SwitchboardError

from .session import Session
from .wire_errors import CLOSE_GOING_AWAY, CLOSE_TOO_LARGE, CLOSE_UNAUTHORIZED

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")


class _Closed(Exception):
    pass


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket):
    core = websocket.app.state.core
    await websocket.accept()
    if core.draining:
        # A late arrival on a replica being removed: send it on at once (HAProxy takes it off
        # this replica within a health check; the client retries with backoff).
        await websocket.close(code=CLOSE_GOING_AWAY, reason="server draining; reconnect with since")
        return
    try:
        identity, since = await _authenticate(core, websocket)
    except _Closed:
        return

    async def send_text(text: str) -> None:
        await websocket.send_text(text)

    async def close(code: int, reason: str) -> None:
        await websocket.close(code=code, reason=reason)

    session = Session(core, identity, send_text, close)
    core.sessions.add(session)
    try:
        try:
            await session.open(since)
        except Exception as error:
            log.warning("could not attach %s: %s", identity.user_id, error)
            await websocket.close(code=CLOSE_GOING_AWAY, reason="mailbox unavailable; retry")
            return
        await _read_frames(core, websocket, session)
        await session.finish()
    except WebSocketDisconnect:
        pass
    finally:
        core.sessions.discard(session)
        session.shutdown()


async def _authenticate(core, websocket: WebSocket) -> tuple[Identity, int | None]:
    settings = core.settings
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout=settings.auth_timeout_s)
    except asyncio.TimeoutError:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="no auth frame in time")
        raise _Closed from None
    if message["type"] == "websocket.disconnect":
        raise _Closed
    text = message.get("text")
    try:
        frame = protocol.parse_client_frame(text if text is not None else "", settings.max_body_bytes)
        if not isinstance(frame, protocol.AuthFrame):
            raise SwitchboardError("the first frame must be auth")
        identity = verify_token(settings.jwt_secret, frame.token, settings.regions, settings.region)
    except SwitchboardError as error:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason=error.message[:120])
        raise _Closed from None
    return identity, frame.since


async def _read_frames(core, websocket: WebSocket, session: Session) -> None:
    limit = core.settings.max_frame_bytes
    while not session.closed:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            if len(data) > limit:
                await session.close(CLOSE_TOO_LARGE, "frame too large")
                return
            session.handle_error_frame("invalid", "frames must be text (JSON)")
            continue
        # A character is at most 4 bytes in UTF-8: only a frame that could be over is encoded.
        if len(text) * 4 > limit and len(text.encode("utf-8", errors="surrogatepass")) > limit:
            await session.close(CLOSE_TOO_LARGE, "frame too large")
            return
        await session.handle_text(text)

