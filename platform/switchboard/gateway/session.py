"""One authenticated WebSocket connection: its cursor, its outgoing queue, its client frames.

The cursor rule that keeps PROTOCOL.md's promises on this connection: an event is written only if
its cursor is exactly one past the last one written (so cursors strictly increase, no gaps, no
duplicates). Events that arrive while the session (re)attaches or catches up wait in a buffer; an
event that shows a gap makes the session catch up from its last cursor, page by page from
PostgreSQL (catch_up.py), never as one list.

What one connection can hold is bounded (docs/SECURITY.md): its output (socket_outbox_bytes; a
client that stops reading is closed 4009 and resumes with `since`), the events buffered while it
attaches, the sends waiting for their commit, the reads and typing in flight (session_tasks_max),
and the frames it may send (frame_rate_per_s; a flood is refused, then closed 4008).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from switchboard import protocol
from switchboard.actors.ops import MarkRead, SendMessage, Typing
from switchboard.auth import Identity
from switchboard.errors import Overloaded, RateLimited, SwitchboardError
from switchboard.token_bucket import TokenBucket, retry_after_ms

from .catch_up import CatchUp
from .outbox import SocketOutbox
from .wire_errors import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_UNAUTHORIZED

log = logging.getLogger(__name__)

# Sends one connection may have waiting for their commit at once.
SENDS_IN_FLIGHT_MAX = 1_000
# Time for the last frames and the close frame to reach a client being closed.
CLOSE_GRACE_S = 1.0
# A typing frame for the same conversation within this long of the last one relayed is dropped:
# clients send one every few seconds while typing, and the indicator lasts longer than that.
TYPING_COALESCE_S = 1.0
TYPING_REMEMBERED_MAX = 64


class Session:
    def __init__(self, core, identity: Identity, send_text: Callable[[str], Awaitable[None]],
                 close: Callable[[int, str], Awaitable[None]], abort: Callable[[], None] = lambda: None):
        self.core = core
        settings = core.settings
        self.identity = identity
        self.user_id = identity.user_id
        self.region = identity.region  # the user's home region: where its mailbox and budgets are
        self.expires_at = identity.expires_at
        self.socket_id = core.hub.new_socket_id()
        self._close = close
        self.out = SocketOutbox(send_text, close, abort, settings.socket_outbox_bytes, self.user_id)
        self.catch_up = CatchUp(self)
        self.last_cursor = 0
        self._frames = TokenBucket(settings.frame_rate_per_s, settings.frame_burst, time.monotonic())
        # Refusals in a row, of frames (the frame budget) and of sends (the send budget): past
        # flood_strikes of either, the connection is closed 4008. Each resets when its budget
        # lets one through.
        self._frame_strikes = 0
        self._send_strikes = 0
        self._in_flight: set[asyncio.Future] = set()  # sends waiting for their commit
        self._tasks: set[asyncio.Task] = set()  # reads and typing waiting for a shard
        self._typing_relayed: dict[str, float] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = False  # no more client frames are taken (closing, or gone)
        self._closer: asyncio.Task | None = None
        self._shut_down = False

    # ---- life cycle ----------------------------------------------------------------------------

    async def open(self, since: int | None) -> None:
        """Register for live events, replay from `since`, then say `ready`. TooManySockets if the
        user already holds its cap of sockets."""
        self.out.start()
        self.last_cursor = since or 0
        self.core.hub.register(self)
        self._arm_expiry()
        self.core.limits.warm(self.identity, "send")
        await self.catch_up.first_attach(since)
        self.out.write(protocol.frame_text(protocol.ready_frame(self.user_id, self.last_cursor)))
        self.catch_up.finish()

    def _arm_expiry(self) -> None:
        if self.expires_at is None:
            return
        delay = max(0.0, self.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        asyncio.ensure_future(self.close(CLOSE_UNAUTHORIZED, "token expired; reconnect with a fresh token and since"))

    async def close(self, code: int, reason: str) -> None:
        """Stop taking frames; answer every send already accepted; then close with `code`.
        (Guarantee 7: a send is answered even when its connection is being closed.)"""
        if self.closed:
            return
        self.closed = True
        self._closer = asyncio.create_task(self._close_after_answers(code, reason))

    async def _close_after_answers(self, code: int, reason: str) -> None:
        pending = set(self._in_flight)
        if pending:
            await asyncio.wait(pending, timeout=self.core.settings.send_timeout_s + CLOSE_GRACE_S)
        self.out.close(code, reason)

    async def finish(self) -> None:
        """The read side is done: let a close in progress reach the client (bounded), then shut
        down. Without this the close frame would be cancelled and the client would see 1006."""
        if self.closed:
            tasks = [t for t in (self._closer, self.out.writer) if t is not None and not t.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=self.core.settings.send_timeout_s + 2 * CLOSE_GRACE_S)
        self.shutdown()

    def shutdown(self) -> None:
        """The socket is gone: stop writing, cancel pending work, leave the mailbox (once)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.closed = True
        self.out.stop()
        if self._expiry is not None:
            self._expiry.cancel()
        self.core.hub.unregister(self)
        self.catch_up.cancel()
        for task in (self._closer, *self._in_flight, *self._tasks):
            if task is not None and not task.done():
                task.cancel()

    # ---- events from the mailbox (the attach machinery is catch_up.py's) ------------------------

    def push_live(self, cursor: int | None, text: str) -> None:
        """A live frame, already rendered; `cursor` None for typing (ephemeral, no cursor)."""
        self.catch_up.push_live(cursor, text)

    def begin_reattach(self) -> bool:
        return self.catch_up.begin_reattach()

    async def reattach_alone(self) -> None:
        await self.catch_up.reattach_alone()

    def reattached(self, result) -> None:
        self.catch_up.reattached(result)

    async def reattach_failed(self) -> None:
        """The mailbox could not be reached: the client reconnects and resumes with `since`."""
        await self.close(CLOSE_GOING_AWAY, "mailbox unavailable; reconnect with since")

    def write_event(self, cursor: int, text: str) -> None:
        if cursor <= self.last_cursor:
            return
        self.last_cursor = cursor
        self.out.write(text)

    # ---- frames from the client ----------------------------------------------------------------

    def handle_error_frame(self, code: str, message: str) -> None:
        self._write(protocol.error_frame(code, message))

    async def handle_text(self, text: str) -> None:
        if self.closed:
            return
        settings = self.core.settings
        try:
            frame = protocol.parse_client_frame(text, settings.max_body_bytes, max_depth=settings.max_json_depth)
        except protocol.FrameError as error:
            if self._within_frame_budget(error.ref):
                self._write(protocol.error_frame(error.code.value, error.message, error.ref))
            return
        if not self._within_frame_budget(getattr(frame, "client_msg_id", None)):
            return
        if isinstance(frame, protocol.SendFrame):
            await self._on_send(frame)
        elif isinstance(frame, protocol.PingFrame):
            self._write(protocol.pong_frame(frame.nonce))
        elif isinstance(frame, protocol.AckFrame):
            self.core.hub.ack(self, min(frame.cursor, self.last_cursor))
        elif isinstance(frame, protocol.ReadFrame):
            self._spawn(self._on_read(frame))
        elif isinstance(frame, protocol.TypingFrame):
            if self._typing_is_news(frame.conversation_id):
                self._spawn(self._on_typing(frame))
        else:  # a second auth frame
            self._write(protocol.error_frame("invalid", "already authenticated"))

    def _within_frame_budget(self, ref: str | None) -> bool:
        """Every client frame spends one token of this connection's frame budget. Past it the frame
        is refused `rate_limited` (and counts as a strike, as a refused send does)."""
        wait_s = self._frames.take(time.monotonic())
        if wait_s == 0.0:
            self._frame_strikes = 0
            return True
        self._frame_strikes += 1
        self._refuse(RateLimited("over this connection's frame rate; slow down", retry_after_ms=retry_after_ms(wait_s)),
                     ref, self._frame_strikes)
        return False

    def _refuse(self, error: SwitchboardError, ref: str | None, strikes: int) -> None:
        if strikes > self.core.settings.flood_strikes:
            asyncio.ensure_future(self.close(CLOSE_POLICY, "flooding past the rate limit"))
            return
        self._write(protocol.error_frame(**_error_fields(error), ref=ref))

    async def _on_send(self, frame: protocol.SendFrame) -> None:
        started = time.monotonic()  # the send timeout counts from here, the lease included
        try:
            await self.core.limits.take(self.identity, "send")
        except RateLimited as error:
            self._send_strikes += 1
            self._refuse(error, frame.client_msg_id, self._send_strikes)
            return
        self._send_strikes = 0
        # A message ends "is typing" on the others' screens: the next typing frame is news again.
        self._typing_relayed.pop(frame.conversation_id, None)
        if len(self._in_flight) >= SENDS_IN_FLIGHT_MAX:
            error = Overloaded("too many sends waiting for their commit on this connection")
            self._write(protocol.error_frame(**_error_fields(error), ref=frame.client_msg_id))
            return
        # A future and a callback rather than a task per send: sends are the hot path, and the
        # batcher already hands back a future (a task and two coroutines each were ~3% of CPU).
        operation = SendMessage(frame.conversation_id, self.user_id, frame.client_msg_id, frame.body)
        answer = self.core.enqueue(operation, started)
        self._in_flight.add(answer)
        answer.add_done_callback(lambda done: self._answer_send(frame.client_msg_id, done))

    def _answer_send(self, client_msg_id: str, answer: asyncio.Future) -> None:
        self._in_flight.discard(answer)
        if answer.cancelled():  # the session shut down: the socket is gone
            return
        outcome = answer.result()
        if outcome.error is not None:
            self._write(protocol.error_frame(**_error_fields(outcome.error), ref=client_msg_id))
        else:
            self._write(protocol.sent_frame(client_msg_id, outcome.value))

    async def _on_read(self, frame: protocol.ReadFrame) -> None:
        outcome = await self.core.submit(MarkRead(frame.conversation_id, self.user_id, frame.seq))
        if outcome.error is not None:
            self._write(protocol.error_frame(**_error_fields(outcome.error)))

    def _typing_is_news(self, conversation_id: str) -> bool:
        now = time.monotonic()
        relayed = self._typing_relayed.get(conversation_id)
        if relayed is not None and now - relayed < TYPING_COALESCE_S:
            return False
        if len(self._typing_relayed) >= TYPING_REMEMBERED_MAX:
            self._typing_relayed.clear()
        self._typing_relayed[conversation_id] = now
        return True

    async def _on_typing(self, frame: protocol.TypingFrame) -> None:
        outcome = await self.core.submit(Typing(frame.conversation_id, self.user_id))
        if outcome.error is not None:
            self._write(protocol.error_frame(**_error_fields(outcome.error)))

    def _spawn(self, coroutine) -> None:
        """Run a read or typing frame's call; at most session_tasks_max at once per connection."""
        if len(self._tasks) >= self.core.settings.session_tasks_max:
            coroutine.close()
            self._frame_strikes += 1
            self._refuse(RateLimited("too many reads and typing frames waiting on this connection",
                                     retry_after_ms=100), None, self._frame_strikes)
            return
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, frame: dict) -> None:
        self.out.write(protocol.frame_text(frame))


def _error_fields(error: SwitchboardError) -> dict:
    wire = error.to_wire()
    return {"code": wire.pop("code"), "message": wire.pop("message"), **wire}
