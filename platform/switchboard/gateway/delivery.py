"""Deliveries from shards to this replica's sockets.

Each gateway replica holds one long-lived stream per shard (an async-generator actor call): the
shard pushes batches of (user_id, cursor, frame text) for the users with sockets here, and this hub hands each
frame to those users' sessions. No polling, no Ray call per message per connection.

When a stream breaks (the shard died and Ray restarts it, having lost its in-memory mailboxes),
the hub opens a new one and re-attaches every local session of that shard with its last cursor:
the shard replays what the session missed from PostgreSQL, so nothing is lost across the restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from switchboard.actors.mailbox import AttachResult, Delivery

from .shards import SHARD_GONE, ShardDirectory

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = 0.2
ATTACH_RETRY_S = 0.2
# Well inside the shards' lease (actors/shard.py GATEWAY_LEASE_S), so two lost beats are survived.
HEARTBEAT_INTERVAL_S = 2.0


class DeliveryHub:
    def __init__(self, gateway_id: str, directory: ShardDirectory, attach_deadline_s: float):
        self.gateway_id = gateway_id
        self.directory = directory
        self.attach_deadline_s = attach_deadline_s
        self.sessions: dict[str, set[Session]] = collections.defaultdict(set)
        self._pumps: list[asyncio.Task] = []

    async def start(self) -> None:
        for index in range(len(self.directory.handles)):
            self._pumps.append(asyncio.create_task(self._pump(index)))
        self._pumps.append(asyncio.create_task(self._heartbeat()))

    async def stop(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

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
        deadline = asyncio.get_running_loop().time() + self.attach_deadline_s
        while True:
            try:
                return await handle.attach.remote(self.gateway_id, user_id, since)
            except SHARD_GONE:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(ATTACH_RETRY_S)

    def ack(self, user_id: str, cursor: int) -> None:
        _, handle = self.directory.for_user(user_id)
        handle.ack.remote(user_id, cursor)

    # ---- streams -------------------------------------------------------------------------------

    async def _pump(self, index: int) -> None:
        handle = self.directory.handles[index]
        reconnecting = False
        while True:
            try:
                stream = handle.stream.remote(self.gateway_id)
                if reconnecting:
                    self._resume_shard(index)
                async for ref in stream:
                    self._dispatch(await ref)
                reconnecting = True  # the shard ended the stream: another replaced it, or it stopped
            except asyncio.CancelledError:
                raise
            except SHARD_GONE as error:
                log.warning("delivery stream from shard %d broke: %s", index, type(error).__name__)
                reconnecting = True
            except Exception:
                log.exception("delivery stream from shard %d failed", index)
                reconnecting = True
            await asyncio.sleep(RECONNECT_BACKOFF_S)

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
        for user_id, sessions in list(self.sessions.items()):
            if self.directory.ring.user_shard(user_id) == index:
                for session in list(sessions):
                    session.resume()

    def _dispatch(self, batch: list[Delivery]) -> None:
        for user_id, cursor, text in batch:
            for session in self.sessions.get(user_id, ()):
                session.push_live(cursor, text)
