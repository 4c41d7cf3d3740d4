"""The high-level client: one user's live session that survives drops.

    async with Client("http://127.0.0.1:8000", token) as client:
        message = await client.send(conversation_id, "hello")    # resolves on `sent`
        async for event in client.events():                       # typed events, in cursor order
            ...

What it does for the application (PROTOCOL.md, "Connecting" and "Guarantees"):
- Reconnects by itself after any drop, with `since` = the newest cursor it has taken in, after an
  exponential backoff with jitter (backoff.py). Events still queued for the application are not
  lost by a reconnect (the queue lives here), so nothing is replayed twice.
- Re-sends every unanswered send after a reconnect with the same client_msg_id: the platform
  commits it once, so `await send(...)` resolves with the one message whatever happened between.
- Keeps the cursor the application has consumed (`cursor`), acks it now and then (`ack_every`), and
  drops any mailbox event whose cursor is not above the last one taken in; such drops are counted
  in `stats.dropped_events` (a correct server never causes one).
- Asks the token source again for every session: pass a callable where tokens expire.
- Takes one gateway URL or several (say, one per region): a session that cannot be opened on one
  is tried on the next, resuming with `since` (gateways.py).

A `recorder` (recorder.py) sees every frame the server sent, per session, before the client
filters anything, and every send attempt: the hook for tools that check the server, not the client.

One task per client (the session runner) reads the socket; nothing is created per frame. Events
wait in an unbounded queue until the application takes them: a client that never iterates
events() should be short-lived, or use HttpApi alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

from .backoff import Backoff
from .connection import CONNECT_TIMEOUT_S, Connection
from .errors import (
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    ApiError,
    ClientClosed,
    ClientError,
    NotConnected,
    SessionClosed,
)
from .events import (
    Connected,
    Disconnected,
    Event,
    MemberEvent,
    Message,
    MessageEvent,
    ReceiptEvent,
    ResyncRequired,
    ServerError,
    TypingEvent,
)
from .gateways import GatewayList
from .http import HttpApi
from .recorder import Recorder
from .tokens import TokenSource, current_token

log = logging.getLogger(__name__)

# Cursor-carrying frames and the event class each becomes (parsed inline: this is the hot path).
MAILBOX_TYPES = ("message", "receipt", "member")
# A session that stayed up this long was healthy: the next drop starts the backoff from scratch.
# A shorter one (the server accepts, then drops at once) keeps growing it, so a client never
# hammers a server that cannot keep it.
STABLE_SESSION_S = 2.0
# Auth refusals (4001) in a row after which a client with a token callable stops; a fixed token
# that is refused stops at once (asking again would give the same token).
MAX_AUTH_REFUSALS = 3
# PROTOCOL.md's default frame limit; a send whose frame is larger is refused here, not by a 1009.
MAX_FRAME_BYTES = 64 * 1024
ACK_EVERY = 100
# close() waits this long for the session runner to see the socket close.
CLOSE_WAIT_S = 5.0
PING_TIMEOUT_S = 10.0

Opener = Callable[..., Awaitable[Connection]]

_END = object()  # the event queue's end marker


@dataclasses.dataclass
class ClientStats:
    sessions: int = 0  # sessions that reached `ready`
    failed_attempts: int = 0  # connection attempts that did not
    resent: int = 0  # sends re-sent after a reconnect
    dropped_events: int = 0  # mailbox events whose cursor was not above the last one taken in
    resyncs: int = 0  # resync_required received (or the server's head was behind our cursor)


@dataclasses.dataclass(eq=False)
class _PendingSend:
    client_msg_id: str
    text: str  # the encoded `send` frame, re-sent verbatim
    future: asyncio.Future
    sent_on: int = 0  # the session it last went out on (0: not yet)
    waiters: int = 0


class Client:
    def __init__(self, url: str | Sequence[str], token: TokenSource, *, since: int | None = None,
                 backoff: Backoff | None = None, recorder: Recorder | None = None,
                 ack_every: int | None = ACK_EVERY, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 keepalive_s: float | None = 20.0, max_frame_bytes: int = MAX_FRAME_BYTES,
                 opener: Opener | None = None):
        self.gateways = GatewayList(url)
        self._token = token
        self._backoff = backoff or Backoff()
        self._recorder = recorder
        self._ack_every = ack_every
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._max_frame_bytes = max_frame_bytes
        self._open = opener or Connection.open
        # `cursor`: the newest mailbox cursor the application has taken from events().
        # `_taken`: the newest cursor taken in from the server (queued or consumed); the next
        # session resumes from it.
        self.cursor: int | None = since
        self._taken: int | None = since
        self._acked = since or 0
        self.user_id: str | None = None
        self.stats = ClientStats()
        self.failure: ClientError | None = None  # why the client stopped by itself, if it did
        self._events: asyncio.Queue = asyncio.Queue()
        self._pending: dict[str, _PendingSend] = {}
        self._pings: dict[str, asyncio.Future] = {}
        self._conn: Connection | None = None
        self._session = 0  # the number of the newest session attempt
        self._runner: asyncio.Task | None = None
        self._closing = False
        self._apis: dict[str, HttpApi] = {}

    @property
    def url(self) -> str:
        """The http(s) base URL of the gateway in use (the first one until a failover)."""
        return self.gateways.http_url

    # ---- life cycle ----------------------------------------------------------------------------

    async def connect(self) -> Client:
        """Open the first session, then keep one up in the background until close(). The first
        attempt is tried once on each gateway URL, in order: ConnectError if none can be reached,
        ApiError ("unauthorized") if the token is refused."""
        if self._runner is not None:
            raise ClientError("already connected")
        for tries_left in range(len(self.gateways) - 1, -1, -1):
            try:
                conn = await self._open_session()
                break
            except SessionClosed as closed:
                if closed.code == CLOSE_UNAUTHORIZED:
                    raise _refusal(closed) from None
                if not tries_left:
                    raise
            except ClientError:
                if not tries_left:
                    raise
        self._runner = asyncio.create_task(self._run(conn), name=f"switchboard-client-{self.user_id}")
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """Ack what was consumed, close the socket, end events(); unanswered sends raise ClientClosed."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn is not None:
            await self.ack()
            await conn.close()
        if self._runner is not None:
            if conn is not None:  # let the runner see the close, so events() gets its Disconnected
                await asyncio.wait({self._runner}, timeout=CLOSE_WAIT_S)
            self._runner.cancel()  # between sessions (backing off, connecting), or stuck
            await asyncio.gather(self._runner, return_exceptions=True)
        self._stop(ClientClosed("the client was closed"))
        for api in self._apis.values():
            await api.aclose()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def api(self) -> HttpApi:
        """The HTTP API of the gateway in use, with the same token source (closed with the client)."""
        api = self._apis.get(self.url)
        if api is None:
            api = self._apis[self.url] = HttpApi(self.url, self._token)
        return api

    # ---- sending -------------------------------------------------------------------------------

    async def send(self, conversation_id: str, body: str, client_msg_id: str | None = None) -> Message:
        """The committed message once the platform answers `sent`, across reconnects if need be.
        Raises ApiError for an `error` answer (retryable ones included: rate_limited carries
        retry_after_ms; retry with the same client_msg_id), ClientClosed if the client stops.
        Cancelling the call (or a timeout around it) stops the client from re-sending it."""
        if self._closing or self.failure is not None:
            raise ClientClosed("the client is closed") from self.failure
        client_msg_id = client_msg_id or uuid.uuid4().hex
        pending = self._pending.get(client_msg_id)
        if pending is None:
            text = json.dumps({"type": "send", "conversation_id": conversation_id,
                               "client_msg_id": client_msg_id, "body": body})
            if len(text) * 4 > self._max_frame_bytes and len(text.encode()) > self._max_frame_bytes:
                raise ApiError("too_large", f"the send frame is over {self._max_frame_bytes} bytes",
                               ref=client_msg_id)
            future = asyncio.get_running_loop().create_future()
            pending = self._pending[client_msg_id] = _PendingSend(client_msg_id, text, future)
            await self._transmit(pending)
        pending.waiters += 1
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.waiters -= 1
            if pending.waiters == 0 and self._pending.get(client_msg_id) is pending:
                del self._pending[client_msg_id]
            raise

    async def _transmit(self, pending: _PendingSend) -> None:
        conn, session = self._conn, self._session
        if conn is None or pending.sent_on == session:
            return  # sent when the next session is ready
        pending.sent_on = session
        if self._recorder is not None:
            self._recorder.send_attempt(session, pending.client_msg_id)
        try:
            await conn.send_text(pending.text)
        except SessionClosed:
            pass  # the runner sees the drop and re-sends after the reconnect

    async def read(self, conversation_id: str, seq: int) -> None:
        """Mark `seq` read over the socket (no answer; a failure comes back as a ServerError event)."""
        await self._send_live({"type": "read", "conversation_id": conversation_id, "seq": seq})

    async def typing(self, conversation_id: str) -> None:
        await self._send_live({"type": "typing", "conversation_id": conversation_id})

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> float:
        """Round trip to the server and back, in seconds."""
        nonce = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        future = self._pings[nonce] = loop.create_future()
        started = loop.time()
        try:
            await self._send_live({"type": "ping", "nonce": nonce})
            async with asyncio.timeout(timeout_s):
                await future
        finally:
            self._pings.pop(nonce, None)
        return loop.time() - started

    async def ack(self, cursor: int | None = None) -> None:
        """Tell the server every event up to `cursor` (default: the consumed cursor) is processed,
        so it may prune them. Without a live session this does nothing (the next ack covers it)."""
        cursor = self.cursor if cursor is None else cursor
        conn = self._conn
        if cursor is None or conn is None:
            return
        try:
            await conn.send_text(f'{{"type":"ack","cursor":{int(cursor)}}}')
            self._acked = max(self._acked, cursor)
        except SessionClosed:
            pass

    async def _send_live(self, frame: dict) -> None:
        conn = self._conn
        if conn is None:
            raise NotConnected("no live session (reconnecting)")
        try:
            await conn.send(frame)
        except SessionClosed as closed:
            raise NotConnected(str(closed)) from None

    # ---- receiving -----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order: mailbox events (cursor order), typing, ResyncRequired,
        ServerError, and Connected / Disconnected around each session. Ends after close(); raises
        the client's `failure` if it stopped by itself (a refused token)."""
        queue = self._events
        while True:
            if self._ack_every and self.cursor is not None and self.cursor - self._acked >= self._ack_every:
                await self.ack()
            event = await queue.get()
            if event is _END:
                queue.put_nowait(_END)  # for any other iterator
                if self.failure is not None:
                    raise self.failure
                return
            cursor = getattr(event, "cursor", None)
            if cursor is not None and not isinstance(event, Connected):
                self.cursor = cursor
            yield event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    # ---- sessions ------------------------------------------------------------------------------

    async def _open_session(self) -> Connection:
        self._session += 1
        number = self._session
        since = self._taken
        on_frame = None
        if self._recorder is not None:
            self._recorder.session_opening(number, since)
            on_frame = partial(self._recorder.frame_received, number)
        try:
            token = await current_token(self._token)
            conn = await self._open(self.gateways.ws_url, token, since, timeout_s=self._connect_timeout_s,
                                    on_frame=on_frame, keepalive_s=self._keepalive_s)
        except ClientError as error:
            self.stats.failed_attempts += 1
            if not (isinstance(error, SessionClosed) and error.code == CLOSE_UNAUTHORIZED):
                self.gateways.failed()  # the next attempt goes to the next gateway
            if self._recorder is not None:
                code = error.code if isinstance(error, SessionClosed) else None
                self._recorder.session_closed(number, code, str(error))
            raise
        self.stats.sessions += 1
        for frame in conn.replayed:
            self._dispatch(frame)
        head = conn.ready["cursor"]
        if self._taken is None:
            self._taken = head
        elif head < self._taken:
            # The mailbox is behind the cursor we hold (its database was reset, or the cursor came
            # from elsewhere): events from it would look like duplicates. Start over from its head.
            self._taken = head
            self.stats.resyncs += 1
            self._events.put_nowait(ResyncRequired(head))
        if self.cursor is None:
            self.cursor = self._acked = head
        self.user_id = conn.ready.get("user_id")
        self._events.put_nowait(Connected(head, since is not None, number, since))
        self._conn = conn
        return conn

    async def _run(self, conn: Connection) -> None:
        """Keep a session up: pump frames, and after a drop reconnect (backoff) and re-send."""
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while True:
                number, started = self._session, loop.time()
                await self._resend_pending()
                async for frame in conn:
                    self._dispatch(frame)
                self._conn = None
                code, reason = conn.close_code, conn.close_reason
                self._after_drop(number, code, reason)
                if self._closing:
                    return
                if loop.time() - started >= STABLE_SESSION_S:
                    attempt = 0
                conn, attempt = await self._reconnect(attempt)
                if conn is None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must not leave callers waiting forever
            log.exception("switchboard client %s stopped", self.user_id)
            self._stop(ClientClosed(f"the client stopped: {error!r}"), failed=True)

    async def _reconnect(self, attempt: int) -> tuple[Connection | None, int]:
        refusals = 0
        while not self._closing:
            await asyncio.sleep(self._backoff.delay_s(attempt))
            attempt += 1
            try:
                return await self._open_session(), attempt
            except SessionClosed as closed:
                if closed.code == CLOSE_UNAUTHORIZED:
                    refusals += 1
                    if isinstance(self._token, str) or refusals >= MAX_AUTH_REFUSALS:
                        self._stop(_refusal(closed), failed=True)
                        return None, attempt
            except ClientError:
                pass
        return None, attempt

    async def _resend_pending(self) -> None:
        # A snapshot: sends made meanwhile go out by themselves (their sent_on is this session).
        for pending in list(self._pending.values()):
            if not pending.future.done() and pending.sent_on not in (0, self._session):
                self.stats.resent += 1
            if not pending.future.done():
                await self._transmit(pending)

    def _after_drop(self, session: int, code: int | None, reason: str) -> None:
        if self._recorder is not None:
            self._recorder.session_closed(session, code, reason)
        if code == CLOSE_TOO_LARGE:
            # The server answers every send it accepted before closing 1009, so the first one of
            # this session still unanswered is the frame it refused: fail it, or it would be
            # re-sent into the same close forever.
            for client_msg_id, pending in self._pending.items():
                if pending.sent_on == session and not pending.future.done():
                    del self._pending[client_msg_id]
                    pending.future.set_exception(ApiError("too_large", reason or "frame too large",
                                                          ref=client_msg_id))
                    break
        for future in self._pings.values():
            if not future.done():
                future.set_exception(NotConnected("the session ended before the pong"))
        self._events.put_nowait(Disconnected(code, reason, session))

    def _stop(self, error: ClientError, failed: bool = False) -> None:
        """No more sessions: fail what waits, end events()."""
        if failed and self.failure is None:
            self.failure = error
        self._conn = None
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                closed = error if isinstance(error, ClientClosed) else ClientClosed(f"the client stopped: {error}")
                closed.__cause__ = error if closed is not error else None
                entry.future.set_exception(closed)
                entry.future.exception()  # retrieved: no "never retrieved" warning if unawaited
        self._events.put_nowait(_END)

    # ---- the hot path: one server frame ------------------------------------------------------

    def _dispatch(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind in MAILBOX_TYPES:
            cursor = frame["cursor"]
            if self._taken is not None and cursor <= self._taken:
                self.stats.dropped_events += 1
                log.warning("dropped %s event with cursor %s (last taken %s)", kind, cursor, self._taken)
                return
            self._taken = cursor
            if kind == "message":
                event = MessageEvent(cursor, Message.from_wire(frame["message"]))
            elif kind == "receipt":
                event = ReceiptEvent(cursor, frame["conversation_id"], frame["user_id"], frame["seq"])
            else:
                event = MemberEvent(cursor, frame["conversation_id"], frame["user_id"], frame["action"])
            self._events.put_nowait(event)
        elif kind == "sent":
            pending = self._pending.pop(frame.get("client_msg_id"), None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(Message.from_wire(frame["message"]))
        elif kind == "error":
            ref = frame.get("ref")
            pending = self._pending.pop(ref, None) if ref is not None else None
            if pending is not None and not pending.future.done():
                pending.future.set_exception(ApiError.from_frame(frame))
            else:
                self._events.put_nowait(ServerError(str(frame.get("code")), str(frame.get("message")), ref))
        elif kind == "typing":
            self._events.put_nowait(TypingEvent(frame["conversation_id"], frame["user_id"]))
        elif kind == "pong":
            future = self._pings.get(frame.get("nonce"))
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "resync_required":
            self._taken = frame["cursor"]
            self.stats.resyncs += 1
            self._events.put_nowait(ResyncRequired(frame["cursor"]))
        # `ready` is read by Connection.wait_ready; unknown types are ignored (the server may add some)


def _refusal(closed: SessionClosed) -> ApiError:
    return ApiError("unauthorized", closed.reason or "the token was refused (close 4001)")
