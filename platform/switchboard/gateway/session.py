"""One authenticated WebSocket connection: its cursor, its outgoing queue, its client frames.

The cursor rule that keeps PROTOCOL.md's promises on this connection: an event is written only if
its cursor is exactly one past the last one written (so cursors strictly increase, no gaps, no
duplicates). Events that arrive while the session (re)attaches wait in a buffer; an event that
shows a gap makes the session re-attach with `since` = its last cursor, and the mailbox replays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from switchboard import protocol
from switchboard.actors.ops import MarkRead, SendMessage
from switchboard.auth import Identity
from switchboard.errors import Overloaded, RateLimited, SwitchboardError

from .wire_errors import CLOSE_GOING_AWAY, CLOSE_POLICY

log = logging.getLogger(__name__)

# Frames queued for a socket that does not read them; past this the client is disconnected with
# 1001 and resumes with `since`, rather than growing this replica's memory without bound.
OUTBOX_MAX_FRAMES = 20_000
# Sends one connection may have waiting for their commit at once.
SENDS_IN_FLIGHT_MAX = 1_000
# Time for the last frames and the close frame to reach a client being closed.
CLOSE_GRACE_S = 1.0


class Session:
    def __init__(self, core, identity: Identity, send_text: Callable[[str], Awaitable[None]],
                 close: Callable[[int, str], Awaitable[None]]):
        self.core = core
        self.user_id = identity.user_id
        self.region = identity.region
        self._send_text = send_text
        self._close = close
        self.last_cursor = 0
        # True while an attach (the first, or a re-attach) is in flight: live events wait in
        # _buffer, and a resume asked for meanwhile is remembered in _resume_wanted.
        self._attaching = True
        self._resume_wanted = False
        self._buffer: list[tuple[int, str]] = []  # (cursor, frame text) held during an attach
        self._out: asyncio.Queue = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._resuming: asyncio.Task | None = None
        self._in_flight: set[asyncio.Future] = set()  # sends, reads and typing waiting for a shard
        self._refusals = 0
        self.closed = False  # no more client frames are taken (closing, or gone)
        self._gone = False  # the socket itself is gone: nothing more can be written
        self._closer: asyncio.Task | None = None
        self._shut_down = False

    # ---- life cycle ----------------------------------------------------------------------------

    async def open(self, since: int | None) -> None:
        """Register for live events, replay from `since`, then say `ready`."""
        self._writer = asyncio.create_task(self._write_loop())
        self.last_cursor = since or 0
        self.core.hub.register(self)
        result = await self.core.hub.attach(self.user_id, since)
        if result.resync_required:
            self._write(protocol.resync_frame(result.head))
        self._write_replay(result.events)
        self.last_cursor = result.head
        self._write(protocol.ready_frame(self.user_id, result.head))
        self._finish_attach()

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
        self._out.put_nowait((code, reason))

    async def finish(self) -> None:
        """The read side is done: let a close in progress reach the client (bounded), then shut
        down. Without this the close frame would be cancelled and the client would see 1006."""
        if self.closed:
            tasks = [t for t in (self._closer, self._writer) if t is not None and not t.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=self.core.settings.send_timeout_s + 2 * CLOSE_GRACE_S)
        self.shutdown()

    def shutdown(self) -> None:
        """The socket is gone: stop writing, cancel pending work, leave the mailbox (once: the
        mailbox counts this replica's sockets, so a second detach would drop a sibling's)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.closed = True
        self._gone = True
        self.core.hub.unregister(self)
        for task in (self._writer, self._resuming, self._closer, *self._in_flight):
            if task is not None and not task.done():
                task.cancel()

    # ---- events from the mailbox -------------------------------------------------------------

    def push_live(self, cursor: int | None, text: str) -> None:
        """A live frame, already rendered; `cursor` None for typing (ephemeral, no cursor)."""
        if cursor is None:
            if not self._attaching:
                self._write_text(text)
            return
        if self._attaching:
            self._buffer.append((cursor, text))
        elif cursor == self.last_cursor + 1:
            self._write_event(cursor, text)
        elif cursor > self.last_cursor + 1:
            self._buffer.append((cursor, text))
            self.resume()

    def resume(self) -> None:
        """Re-attach with our last cursor (we saw a gap)."""
        if self.begin_reattach():
            self._resuming = asyncio.create_task(self.reattach_alone())

    def begin_reattach(self) -> bool:
        """Enter the attaching state for a re-attach the caller will make with `last_cursor`; False
        if none is needed now (closed, or an attach is in flight: it is redone when that ends)."""
        if self.closed:
            return False
        if self._attaching:
            self._resume_wanted = True  # after the attach in flight, with the cursor it reaches
            return False
        self._attaching = True
        return True

    async def reattach_alone(self) -> None:
        """A re-attach begun with begin_reattach, made by this session's own attach call."""
        try:
            result = await self.core.hub.attach(self.user_id, self.last_cursor)
        except Exception as error:
            log.warning("re-attach of %s failed: %s", self.user_id, error)
            await self.reattach_failed()
            return
        self.reattached(result)

    def reattached(self, result) -> None:
        """The answer to a re-attach begun with begin_reattach: replay, then the buffered live events."""
        if result.resync_required:
            self._write(protocol.resync_frame(result.head))
            self.last_cursor = result.head
        self._write_replay(result.events)
        self._finish_attach()

    async def reattach_failed(self) -> None:
        """The mailbox could not be reached: the client reconnects and resumes with `since`."""
        await self.close(CLOSE_GOING_AWAY, "mailbox unavailable; reconnect with since")

    def _finish_attach(self) -> None:
        buffered, self._buffer = sorted(self._buffer, key=lambda item: item[0]), []
        self._attaching = False
        for cursor, text in buffered:
            self.push_live(cursor, text)
        if self._resume_wanted and not self._attaching:
            self._resume_wanted = False
            self.resume()

    def _write_replay(self, events) -> None:
        for event in events:
            self._write_event(event.cursor, protocol.mailbox_event_text(event.kind, event.cursor, event.payload))

    def _write_event(self, cursor: int, text: str) -> None:
        if cursor <= self.last_cursor:
            return
        self.last_cursor = cursor
        self._write_text(text)

    # ---- frames from the client ----------------------------------------------------------------

    def handle_error_frame(self, code: str, message: str) -> None:
        self._write(protocol.error_frame(code, message))

    async def handle_text(self, text: str) -> None:
        if self.closed:
            return
        try:
            frame = protocol.parse_client_frame(text, self.core.settings.max_body_bytes)
        except protocol.FrameError as error:
            self._write(protocol.error_frame(error.code.value, error.message, error.ref))
            return
        if isinstance(frame, protocol.SendFrame):
            await self._on_send(frame)
        elif isinstance(frame, protocol.PingFrame):
            self._write(protocol.pong_frame(frame.nonce))
        elif isinstance(frame, protocol.AckFrame):
            self.core.hub.ack(self.user_id, min(frame.cursor, self.last_cursor))
        elif isinstance(frame, protocol.ReadFrame):
            self._spawn(self._on_read(frame))
        elif isinstance(frame, protocol.TypingFrame):
            self._spawn(self._on_typing(frame))
        else:  # a second auth frame
            self._write(protocol.error_frame("invalid", "already authenticated"))

    async def _on_send(self, frame: protocol.SendFrame) -> None:
        try:
            self.core.limiter.check(self.user_id)
        except RateLimited as error:
            self._refusals += 1
            if self._refusals > self.core.settings.flood_strikes:
                await self.close(CLOSE_POLICY, "flooding past the rate limit")
                return
            self._write(protocol.error_frame(**_error_fields(error), ref=frame.client_msg_id))
            return
        self._refusals = 0
        if len(self._in_flight) >= SENDS_IN_FLIGHT_MAX:
            error = Overloaded("too many sends waiting for their commit on this connection")
            self._write(protocol.error_frame(**_error_fields(error), ref=frame.client_msg_id))
            return
        # A future and a callback rather than a task per send: sends are the hot path, and the
        # batcher already hands back a future (a task and two coroutines each were ~3% of CPU).
        operation = SendMessage(frame.conversation_id, self.user_id, frame.client_msg_id, frame.body)
        answer = self.core.enqueue(operation)
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

    async def _on_typing(self, frame: protocol.TypingFrame) -> None:
        outcome = await self.core.typing(frame.conversation_id, self.user_id)
        if outcome.error is not None:
            self._write(protocol.error_frame(**_error_fields(outcome.error)))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    # ---- the socket writer ---------------------------------------------------------------------

    def _write(self, frame: dict) -> None:
        self._write_text(protocol.frame_text(frame))

    def _write_text(self, text: str) -> None:
        if self._gone:
            return
        if self._out.qsize() >= OUTBOX_MAX_FRAMES:
            # Too slow to read: close at once (the client resumes with `since`, and retries any
            # unanswered send with its client_msg_id), rather than grow this replica's memory.
            self.closed = self._gone = True
            self._out.put_nowait((CLOSE_GOING_AWAY, "too slow to read; reconnect with since"))
            return
        self._out.put_nowait(text)

    async def _write_loop(self) -> None:
        try:
            while True:
                item = await self._out.get()
                if isinstance(item, tuple):
                    await self._close(*item)
                    return
                await self._send_text(item)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client went away mid-write: the reader will see it too
            log.debug("socket of %s stopped taking frames: %s", self.user_id, error)
            self._gone = True


def _error_fields(error: SwitchboardError) -> dict:
    wire = error.to_wire()
    return {"code": wire.pop("code"), "message": wire.pop("message"), **wire}
