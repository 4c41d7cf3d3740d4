"""What one socket has yet to write, bounded in bytes, and the task that writes it.

A client that stops reading must not grow this replica's memory: once more than `max_bytes` wait
(Settings.socket_outbox_bytes; frames are ASCII JSON, so characters are bytes) the queue is dropped
and the socket closed with 4009, "too slow: reconnect with since". A client that reads nothing at
all cannot even take the close frame (the transport stays paused and the ASGI close waits for it),
so after CLOSE_GRACE_S the connection is aborted instead. Either way the client resumes with
`since` and loses nothing: every event it missed is durable, and an unanswered send is re-sent
with its client_msg_id.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from .wire_errors import CLOSE_TOO_SLOW

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 1.0


class SocketOutbox:
    def __init__(self, send_text: Callable[[str], Awaitable[None]], close: Callable[[int, str], Awaitable[None]],
                 abort: Callable[[], None], max_bytes: int, name: str = ""):
        self._send_text = send_text
        self._close = close
        self._abort = abort
        self.max_bytes = max_bytes
        self.name = name
        self._queue: collections.deque = collections.deque()  # texts, and at most one (code, reason)
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.bytes = 0
        self.gone = False  # nothing more can be written (closing for good, or the socket is gone)
        self.too_slow = False
        self.writer: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None

    def start(self) -> None:
        self.writer = asyncio.create_task(self._run())

    def write(self, text: str) -> None:
        if self.gone:
            return
        if self.bytes + len(text) > self.max_bytes:
            self._close_too_slow()
            return
        self._queue.append(text)
        self.bytes += len(text)
        if self.bytes * 2 > self.max_bytes:
            self._drained.clear()
        self._ready.set()

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then the close frame."""
        if self.gone:
            return
        self.gone = True
        self._queue.append((code, reason))
        self._ready.set()

    async def drained(self) -> None:
        """Until at most half of max_bytes waits (or nothing more can be written): how a replay
        paces itself to the client's reading."""
        while not self._drained.is_set() and not self.gone:
            await self._drained.wait()

    def stop(self) -> None:
        self.gone = True
        self._drained.set()
        for task in (self.writer, self._closer):
            if task is not None and not task.done():
                task.cancel()

    def _close_too_slow(self) -> None:
        log.info("socket of %s is too slow to read (%d bytes waiting): closing 4009", self.name, self.bytes)
        self.gone = self.too_slow = True
        self._queue.clear()
        self.bytes = 0
        self._drained.set()
        if self.writer is not None:
            self.writer.cancel()  # it may be stuck on a transport the client stopped reading
        self._closer = asyncio.ensure_future(self._close_or_abort())

    async def _close_or_abort(self) -> None:
        try:
            await asyncio.wait_for(self._close(CLOSE_TOO_SLOW, "too slow to read; reconnect with since"), CLOSE_GRACE_S)
        except Exception:  # the close frame could not be written in time (or at all)
            self._abort()

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                item = self._queue.popleft()
                if isinstance(item, tuple):
                    await self._close(*item)
                    return
                await self._send_text(item)
                self.bytes -= len(item)
                if self.bytes * 2 <= self.max_bytes:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client went away mid-write: the reader will see it too
            log.debug("socket of %s stopped taking frames: %s", self.name, error)
            self.gone = True
            self._drained.set()
