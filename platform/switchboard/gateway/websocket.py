"""The WebSocket endpoint /v1/ws: check the Origin, hold a pre-auth place, authenticate, open a
session, pump client frames into it."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from switchboard import protocol
from switchboard.auth import Identity, verify_token
from switchboard.errors import SwitchboardError, TooManySockets

from . import serve_patches
from .client_address import client_address, origin_allowed
from .session import Session
from .wire_errors import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_LARGE, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")


class _Closed(Exception):
    pass


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket):
    core = websocket.app.state.core
    settings = core.settings
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), settings.allowed_origins):
        await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake is refused (HTTP 403)
        return
    await websocket.accept()
    if core.draining:
        # A late arrival on a replica being removed: send it on at once (HAProxy takes it off
        # this replica within a health check; the client retries with backoff).
        await websocket.close(code=CLOSE_GOING_AWAY, reason="server draining; reconnect with since")
        return
    if core.sockets_full():
        # Refused at once rather than left in its handshake: the client backs off and retries
        # (the SDK tries its next gateway URL), and autoscaling adds replicas meanwhile.
        await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="this gateway holds all the sockets it may; retry")
        return
    address = client_address(websocket.scope, websocket.headers, settings.trusted_proxies)
    with core.preauth.holding(address) as admitted:
        if not admitted:
            await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="too many sockets waiting to authenticate")
            return
        try:
            identity, since = await _authenticate(core, websocket)
        except _Closed:
            return
    await _serve(core, websocket, identity, since)


async def _serve(core, websocket: WebSocket, identity: Identity, since: int | None) -> None:
    async def send_text(text: str) -> None:
        await websocket.send_text(text)

    async def close(code: int, reason: str) -> None:
        await websocket.close(code=code, reason=reason)

    session = Session(core, identity, send_text, close, abort=lambda: abort_connection(websocket))
    core.sessions.add(session)
    try:
        try:
            await session.open(since)
        except TooManySockets as error:
            await websocket.close(code=CLOSE_POLICY, reason=error.message)
            return
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
    if text is not None and protocol.frame_too_large(text, settings.max_auth_frame_bytes):
        await websocket.close(code=CLOSE_TOO_LARGE, reason="auth frame too large")
        raise _Closed
    try:
        frame = protocol.parse_client_frame(text if text is not None else "", settings.max_body_bytes,
                                            max_depth=settings.max_json_depth)
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
        if protocol.frame_too_large(text, limit):  # the server's own max size catches most first
            await session.close(CLOSE_TOO_LARGE, "frame too large")
            return
        await session.handle_text(text)


def abort_connection(websocket: WebSocket) -> None:
    """Drop the TCP connection at once, with whatever output it still holds: for a client that
    reads nothing, whose transport is paused so that even a close frame cannot be written. ASGI
    has no abort; the replica's uvicorn connection from this socket's peer is found and its
    transport aborted (serve_patches.transport_of). Without one (another server), nothing to do
    but let the server's own timeouts close it."""
    transport = serve_patches.transport_of(websocket.scope)
    if transport is not None:
        transport.abort()
    else:
        log.warning("cannot abort a stalled socket here: it closes by the server's own timeouts")
