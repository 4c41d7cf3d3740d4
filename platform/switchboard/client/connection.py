"""One WebSocket session, low level: open, authenticate (optionally with `since`), wait for
`ready`, then raw frames in and out until the socket closes. No reconnects, no bookkeeping: that
is the Client's job (client.py); the benchmark and the integration tests use this directly.

    conn = await Connection.open(ws_url, token, since=41)
    conn.replayed        # the frames before `ready` (the replay, or a resync_required)
    conn.ready           # {"type": "ready", "user_id": ..., "cursor": HEAD}
    async for frame in conn:         # dicts, until the socket closes
        ...
    conn.close_code, conn.close_reason

`on_frame(frame)`, if given, sees every frame `recv` parses (the replay and `ready` included),
in arrival order, before anyone else does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from .errors import ConnectError, SessionClosed

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# Server frames are small (a message body is at most 16 KiB); this only bounds a runaway server.
MAX_SERVER_FRAME_BYTES = 1 << 20

FrameHook = Callable[[dict], None]


class Connection:
    def __init__(self, ws: ClientConnection, on_frame: FrameHook | None = None):
        self._ws = ws
        self.on_frame = on_frame
        self.ready: dict | None = None
        self.replayed: list[dict] = []

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, *, timeout_s: float = CONNECT_TIMEOUT_S, on_frame: FrameHook | None = None,
                      keepalive_s: float | None = None, max_size: int | None = MAX_SERVER_FRAME_BYTES) -> Connection:
        """Only the socket: nothing is sent yet. keepalive_s sends WebSocket pings (and closes the
        socket if one goes unanswered as long), which finds dead peers; None sends none."""
        try:
            ws = await connect(url, open_timeout=timeout_s, close_timeout=CLOSE_TIMEOUT_S,
                               ping_interval=keepalive_s, ping_timeout=keepalive_s,
                               compression=None, max_size=max_size)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectError(f"cannot open {url}: {exc!r}") from None
        return cls(ws, on_frame)

    async def authenticate(self, token: str, since: int | None = None) -> None:
        frame: dict = {"type": "auth", "token": token}
        if since is not None:
            frame["since"] = since
        await self.send(frame)

    async def wait_ready(self, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
        """Read frames until `ready`, keeping the ones before it in `replayed`. timeout_s bounds the
        wait for each frame, not the whole replay, so a long replay is not cut short."""
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    frame = await self.recv()
            except TimeoutError:
                raise ConnectError(f"no `ready` within {timeout_s} s") from None
            if frame.get("type") == "ready":
                self.ready = frame
                return frame
            self.replayed.append(frame)

    @classmethod
    async def open(cls, url: str, token: str, since: int | None = None, *,
                   timeout_s: float = CONNECT_TIMEOUT_S, on_frame: FrameHook | None = None,
                   keepalive_s: float | None = None, max_size: int | None = MAX_SERVER_FRAME_BYTES) -> Connection:
        """connect + authenticate + wait_ready. Raises ConnectError, or SessionClosed (4001: the
        token was refused) if the server closed the socket before `ready`."""
        conn = await cls.connect(url, timeout_s=timeout_s, on_frame=on_frame, keepalive_s=keepalive_s,
                                 max_size=max_size)
        try:
            await conn.authenticate(token, since)
            await conn.wait_ready(timeout_s)
        except BaseException:
            await conn.close()
            raise
        return conn

    # ---- frames --------------------------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        """The mailbox head `ready` reported."""
        return None if self.ready is None else self.ready["cursor"]

    async def recv_text(self) -> str | bytes:
        """The next frame as the server sent it; SessionClosed once the socket is closed."""
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            raise SessionClosed(self.close_code, self.close_reason) from None

    async def recv(self) -> dict:
        frame = json.loads(await self.recv_text())
        if self.on_frame is not None:
            self.on_frame(frame)
        return frame

    async def __aiter__(self) -> AsyncIterator[dict]:
        """Frames until the socket closes. The hot path of every client: one generator frame for
        the whole iteration (no coroutine per frame), names bound once, one parse per frame."""
        recv, loads, on_frame = self._ws.recv, json.loads, self.on_frame
        try:
            while True:
                frame = loads(await recv())
                if on_frame is not None:
                    on_frame(frame)
                yield frame
        except ConnectionClosed:
            return

    async def send(self, frame: dict) -> None:
        await self.send_text(json.dumps(frame))

    async def send_text(self, data: str | bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            raise SessionClosed(self.close_code, self.close_reason) from None

    # ---- closing -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ws.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The server's close code (1001 going away, 4001 unauthorized, ...); 1006 if the socket
        dropped without a close frame; None while open."""
        return self._ws.close_code

    @property
    def close_reason(self) -> str:
        return self._ws.close_reason or ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self._ws.close(code, reason)
        except Exception:  # already gone: closing is best effort
            pass

    async def wait_closed(self) -> None:
        await self._ws.wait_closed()
