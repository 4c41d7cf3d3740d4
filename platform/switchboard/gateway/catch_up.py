"""How a session gets every event, in cursor order, once: the first attach, the re-attach after
a shard restart, and catching up after a gap, each replayed from PostgreSQL page by page.

While an attach or a catch-up runs, live events wait in a buffer (bounded: past ATTACH_BUFFER_MAX
events, or a quarter of the socket's output limit, it is dropped and the catch-up simply reads
further, since every event is durable). A page is fetched only once the socket has taken most of
the last one (SocketOutbox.drained), so a resume of 20,000 events costs one page of memory here,
and one page of a Ray reply, at a time.

Two requests can arrive while one runs: a catch-up (a gap was seen, or the buffer overflowed),
and a re-registration (the shard lost this socket: it restarted, or dropped this replica). Both
are remembered and done when the running one ends, the registration first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from switchboard import protocol
from switchboard.actors.mailbox import REPLAY_PAGE, AttachResult

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

ATTACH_BUFFER_MAX = 2_000


class CatchUp:
    def __init__(self, session: Session):
        self.session = session
        self.attaching = True
        self._buffer: list[tuple[int, str]] = []  # (cursor, frame text) held during an attach
        self._buffered_bytes = 0
        self._catch_up_wanted = False
        self._register_wanted = False
        self._task: asyncio.Task | None = None

    # ---- the three ways in --------------------------------------------------------------------

    async def first_attach(self, since: int | None) -> None:
        """Register the socket (counted against the user's cap) and replay from `since`; the
        caller writes `ready` and then calls finish()."""
        session = self.session
        result = await session.core.hub.attach(session, since, fresh=True)
        if since is None and not result.resync_required:
            session.last_cursor = result.head
        await self._apply(result)

    def begin_reattach(self) -> bool:
        """Enter the attaching state for a re-registration the caller (the hub) will make with
        `last_cursor`; False if none is needed now (closed, or an attach runs: done after it)."""
        if self.session.closed:
            return False
        if self.attaching:
            self._register_wanted = True
            return False
        self.attaching = True
        return True

    def reattached(self, result: AttachResult) -> None:
        """The answer to a re-registration begun with begin_reattach."""
        self._task = asyncio.ensure_future(self._apply_then_finish(result))

    async def reattach_alone(self) -> None:
        """A re-registration begun with begin_reattach, made by this session's own call."""
        session = self.session
        try:
            result = await session.core.hub.attach(session, session.last_cursor)
        except Exception as error:
            log.warning("re-attach of %s failed: %s", session.user_id, error)
            await session.reattach_failed()
            return
        self.reattached(result)

    def push_live(self, cursor: int | None, text: str) -> None:
        session = self.session
        if cursor is None:  # typing: only while nothing is being caught up
            if not self.attaching:
                session.out.write(text)
            return
        if self.attaching:
            self._hold(cursor, text)
        elif cursor == session.last_cursor + 1:
            session.write_event(cursor, text)
        elif cursor > session.last_cursor + 1:
            self._hold(cursor, text)
            self._start_catch_up()

    def finish(self) -> None:
        """The attach or catch-up is done: the buffered live events, then what was asked meanwhile."""
        buffered, self._buffer, self._buffered_bytes = sorted(self._buffer, key=lambda item: item[0]), [], 0
        self.attaching = False
        for cursor, text in buffered:
            self.push_live(cursor, text)
        if self.attaching or self.session.closed:
            return  # a gap among them started a catch-up
        if self._register_wanted:
            self._register_wanted = self._catch_up_wanted = False
            self.attaching = True
            self._task = asyncio.ensure_future(self.reattach_alone())
        elif self._catch_up_wanted:
            self._catch_up_wanted = False
            self._start_catch_up()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ---- internals ------------------------------------------------------------------------------

    def _hold(self, cursor: int, text: str) -> None:
        limit = self.session.out.max_bytes // 4
        if len(self._buffer) >= ATTACH_BUFFER_MAX or self._buffered_bytes + len(text) > limit:
            self._buffer, self._buffered_bytes = [], 0  # durable anyway: the catch-up reads them
            self._catch_up_wanted = True
            return
        self._buffer.append((cursor, text))
        self._buffered_bytes += len(text)

    def _start_catch_up(self) -> None:
        if self.session.closed:
            return
        if self.attaching:
            self._catch_up_wanted = True
            return
        self.attaching = True
        self._catch_up_wanted = False  # this one reads whatever was wanted so far
        self._task = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            await self._pages()
        except Exception as error:
            log.warning("catching up %s failed: %s", self.session.user_id, error)
            await self.session.reattach_failed()
            return
        self.finish()

    async def _apply_then_finish(self, result: AttachResult) -> None:
        try:
            await self._apply(result)
        except Exception as error:
            log.warning("replay for %s failed: %s", self.session.user_id, error)
            await self.session.reattach_failed()
            return
        self.finish()

    async def _apply(self, result: AttachResult) -> None:
        """Write an attach's answer (resync, or its first page), then the rest page by page."""
        session = self.session
        if result.resync_required:
            session.out.write(protocol.frame_text(protocol.resync_frame(result.head)))
            session.last_cursor = result.head
            return
        self._write_events(result.events)
        if result.more:
            await self._pages()

    async def _pages(self) -> None:
        """Replay from last_cursor to whatever is committed, one page at a time, each once the
        socket has taken most of the one before."""
        session = self.session
        while not session.closed:
            await session.out.drained()
            page = await session.core.hub.replay(session, session.last_cursor, REPLAY_PAGE)
            if page.resync_required or (page.events and page.events[0].cursor != session.last_cursor + 1):
                # pruned meanwhile (or the mailbox is behind us): the client reloads over HTTP
                session.out.write(protocol.frame_text(protocol.resync_frame(page.head)))
                session.last_cursor = page.head
                return
            self._write_events(page.events)
            if not page.more:
                return

    def _write_events(self, events) -> None:
        session = self.session
        for event in events:
            session.write_event(event.cursor, protocol.mailbox_event_text(event.kind, event.cursor, event.payload))
