"""Deliveries from shards to this replica's sockets.

Each gateway replica holds one long-lived stream per shard (an async-generator actor call): the
shard pushes batches of (user_id, cursor, frame text) for the users with sockets here, and this hub hands each
frame to those users' sessions. No polling, no Ray call per message per connection.

When a stream breaks (the shard died and Ray restarts it, having lost its in-memory mailboxes),
the hub opens a new one and re-attaches every local session of that shard with its last cursor, all
in one call: the shard replays what each session missed from PostgreSQL, so nothing is lost across
the restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from switchboard.actors.mailbox import AttachResult, Delivery

from .shards import RETRY_BACKOFF_S, SHARD_GONE, ShardDirectory, call_while_restarting

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

# Well inside the shards' lease (actors/shard.py GATEWAY_LEASE_S), so two lost beats are survived.
HEARTBEAT_INTERVAL_S = 2.0


class DeliveryHub:
    def __init__(self, gateway_id: str, directory: ShardDirectory, attach_deadline_s: float):
        self.gateway_id = gateway_id
        self.directory = directory
        self.attach_deadline_s = attach_deadline_s
        self.sessions: dict[str, set[Session]] = collections.defaultdict(set)
        self._pumps: list[asyncio.Task] = []
        self._reattaching: set[asyncio.Task] = set()

    async def start(self) -> None:
        for index in range(len(self.directory.handles)):
            self._pumps.append(asyncio.create_task(self._pump(index)))
        self._pumps.append(asyncio.create_task(self._heartbeat()))

    async def stop(self) -> None:
        tasks = [*self._pumps, *self._reattaching]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- sessions ----------------------------------------------------------------------------

    def register(self, session: Session) -> None:
        self.sessions[session.user_id].add(session)

    def unregister(self, session: Session) -> None:
        sessions = self.sessions.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[session.user_id]
        _, handle = self.directory.for_user(session.user_id)
        try:
            handle.detach.remote(self.gateway_id, session.user_id)
        except Exception as error:  # the shard is gone; its restart forgot the socket anyway
            log.debug("detach failed: %s", error)

    async def attach(self, user_id: str, since: int | None) -> AttachResult:
        """Attach a socket to its mailbox, waiting out a shard restart up to the deadline."""
        _, handle = self.directory.for_user(user_id)
        return await call_while_restarting(lambda: handle.attach.remote(self.gateway_id, user_id, since),
                                           self.attach_deadline_s)

    def ack(self, user_id: str, cursor: int) -> None:
        _, handle = self.directory.for_user(user_id)
        handle.ack.remote(user_id, cursor)

    # ---- streams -------------------------------------------------------------------------------

    async def _pump(self, index: int) -> None:
        handle = self.directory.handles[index]
        reconnecting = False
        while True:
            try:
                async for ref in handle.stream.remote(self.gateway_id):
                    batch = await ref
                    if reconnecting:  # the first batch (empty): the stream is open at the shard
                        reconnecting = False
                        self._resume_shard(index)
                    self._dispatch(batch)
                reconnecting = True  # the shard ended the stream: another replaced it, or it stopped
            except asyncio.CancelledError:
                raise
            except SHARD_GONE as error:
                if not reconnecting:  # once per outage, not once per retry
                    log.warning("delivery stream from shard %d broke: %s", index, type(error).__name__)
                reconnecting = True
            except Exception:
                log.exception("delivery stream from shard %d failed", index)
                reconnecting = True
            await asyncio.sleep(RETRY_BACKOFF_S)

    async def _heartbeat(self) -> None:
        """Tell every shard this replica lives; a dead one stops, and the shards forget its sockets."""
        while True:
            for handle in self.directory.handles:
                try:
                    handle.heartbeat.remote(self.gateway_id)
                except Exception as error:  # a restarting shard: the next beat reaches it
                    log.debug("heartbeat failed: %s", error)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    def _resume_shard(self, index: int) -> None:
        """Re-attach every local session of a restarted shard, with its last cursor."""
        sessions = [session for user_id, user_sessions in list(self.sessions.items())
                    if self.directory.ring.user_shard(user_id) == index
                    for session in user_sessions if session.begin_reattach()]
        if sessions:
            task = asyncio.create_task(self._reattach_all(index, sessions))
            self._reattaching.add(task)
            task.add_done_callback(self._reattaching.discard)

    async def _reattach_all(self, index: int, sessions: list[Session]) -> None:
        """One attach_many call for all the sessions: one call per socket queued thousands of calls
        ahead of the restarted shard's first send (benchmarks/recovery.py: kill -> first `sent` for
        a shard with 10,000 live mailboxes, median 3.6 s per socket against 2.5 s in one call).
        If the call fails for another reason than the shard being gone (a replay query), each
        session tries alone, so that one mailbox's trouble does not close every socket."""
        handle = self.directory.handles[index]

        def attach_open_sessions():  # again on each retry, without the sessions closed meanwhile
            nonlocal sessions
            sessions = [session for session in sessions if not session.closed]
            return handle.attach_many.remote(self.gateway_id, [(s.user_id, s.last_cursor) for s in sessions])

        try:
            results = await call_while_restarting(attach_open_sessions, self.attach_deadline_s)
        except SHARD_GONE as error:
            log.warning("shard %d stayed unavailable (%s); closing its %d sessions here",
                        index, type(error).__name__, len(sessions))
            await asyncio.gather(*(session.reattach_failed() for session in sessions))
            return
        except Exception as error:
            log.warning("re-attaching %d sessions to shard %d at once failed (%s); one by one",
                        len(sessions), index, error)
            await asyncio.gather(*(session.reattach_alone() for session in sessions))
            return
        for session, result in zip(sessions, results):
            session.reattached(result)

    def _dispatch(self, batch: list[Delivery]) -> None:
        for user_id, cursor, text in batch:
            for session in self.sessions.get(user_id, ()):
                session.push_live(cursor, text)
