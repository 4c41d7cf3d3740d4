"""Deliveries from shards to this replica's sockets.

Each gateway replica holds one long-lived stream per shard (an async-generator actor call): the
shard pushes batches of (user_id, cursor, frame text) for the users with sockets here, and this hub hands each
frame to those users' sessions. No polling, no Ray call per message per connection. The stream
has backpressure (actors/remote.py STREAM_BACKLOG unread batches at most); a replica that falls
further behind has its outbox at the shard dropped and re-attaches (actors/gateway_outbox.py).

When a stream breaks (the shard died and Ray restarts it, having lost its in-memory mailboxes,
or it dropped this replica's sockets), the hub opens a new one and re-attaches every local
session of that shard with its last cursor, all in one call: the shard replays what each session
missed from PostgreSQL, so nothing is lost. Each session names its socket with an id of this
replica's, so attaching the same socket twice registers it once.

Acks are coalesced: each user's newest acked cursor is kept here and sent to its shard every
ACK_FLUSH_INTERVAL_S, one batched call for them all, however fast clients ack.

Streams from this replica's own region's shards open at start; one from another region's shard
opens when the first socket of a user homed there attaches here, so a replica whose users are
all at home makes no call to another region at all. Calls to other regions are counted by kind.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import TYPE_CHECKING

from ray.exceptions import RayTaskError

from switchboard.actors.mailbox import AttachResult, Delivery
from switchboard.actors.ops import Ack
from switchboard.actors.placement import PLACEMENT_MARK
from switchboard.errors import Moved

from .shards import RETRY_BACKOFF_S, SHARD_GONE, ShardDirectory, call_while_restarting, unwrap

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

# Well inside the shards' lease (actors/shard.py GATEWAY_LEASE_S), so two lost beats are survived.
HEARTBEAT_INTERVAL_S = 2.0
ACK_FLUSH_INTERVAL_S = 1.0
ACK_TIMEOUT_S = 2.0


class DeliveryHub:
    def __init__(self, gateway_id: str, directory: ShardDirectory, attach_deadline_s: float, enqueue_at=None,
                 placements=None):
        self.gateway_id = gateway_id
        self.placements = placements  # gateway/placement_follower.py: learns reshards
        self.directory = directory
        self.attach_deadline_s = attach_deadline_s
        self.enqueue_at = enqueue_at  # (shard index, operation, timeout) -> future of its Outcome
        self.sessions: dict[str, set[Session]] = collections.defaultdict(set)
        self._socket_ids = itertools.count(1)
        self._acks: dict[tuple[str, str], int] = {}  # (user_id, home region) -> newest acked cursor
        self._pumps: dict[int, asyncio.Task] = {}  # flat shard index -> its stream's pump
        self._loops: list[asyncio.Task] = []
        self._reattaching: set[asyncio.Task] = set()
        self.calls_abroad: collections.Counter = collections.Counter()  # kind -> calls to other regions

    async def start(self) -> None:
        for index in self.directory.home_indexes():
            self.open_stream(index)
        self._loops.append(asyncio.create_task(self._heartbeat()))
        if self.enqueue_at is not None:
            self._loops.append(asyncio.create_task(self._flush_acks_forever()))

    async def stop(self) -> None:
        tasks = [*self._pumps.values(), *self._loops, *self._reattaching]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def running(self) -> bool:
        """Every stream pump and the heartbeat are alive (Serve's check_health asks)."""
        tasks = [*self._pumps.values(), *self._loops]
        return bool(tasks) and not any(task.done() for task in tasks)

    def open_stream(self, index: int) -> None:
        """Listen to shard `index` from now on (once: a pump reopens its stream by itself)."""
        if index not in self._pumps:
            self._count(index, "stream")
            self._pumps[index] = asyncio.create_task(self._pump(index))

    def _count(self, index: int, kind: str) -> None:
        if self.directory.is_abroad(index):
            self.calls_abroad[kind] += 1

    # ---- sessions ----------------------------------------------------------------------------

    def new_socket_id(self) -> int:
        return next(self._socket_ids)

    def register(self, session: Session) -> None:
        self.sessions[session.user_id].add(session)

    def unregister(self, session: Session) -> None:
        sessions = self.sessions.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[session.user_id]
        index, handle = self.directory.for_user(session.user_id, session.region)
        self._count(index, "detach")
        try:
            handle.detach.remote(self.gateway_id, session.user_id, session.socket_id)
        except Exception as error:  # the shard is gone; its restart forgot the socket anyway
            log.debug("detach failed: %s", error)

    async def attach(self, session: Session, since: int | None, fresh: bool = False) -> AttachResult:
        """Attach a session's socket to its mailbox (the first page of its replay comes back),
        waiting out a shard restart up to the deadline; `fresh` counts it against the user's cap."""
        def attach(index, handle):
            self.open_stream(index)  # before the attach: what the shard queues meanwhile waits there
            self._count(index, "attach")
            return handle.attach.remote(self.gateway_id, session.user_id, since, session.socket_id, fresh)
        return await self._at_owner(session, attach)

    async def replay(self, session: Session, after: int, limit: int) -> AttachResult:
        """The next page of a session's user's events after `after` (a read; no registration)."""
        def replay(index, handle):
            self._count(index, "replay")
            return handle.replay.remote(session.user_id, after, limit)
        return await self._at_owner(session, replay)

    async def _at_owner(self, session: Session, call):
        """call(index, handle) at the shard owning the session's mailbox, waiting out a restart;
        a shard that says Moved (a reshard this replica has not heard of) sends it to the new
        owner once the placement is learned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.attach_deadline_s
        while True:
            index, handle = self.directory.for_user(session.user_id, session.region)
            try:
                return await call_while_restarting(lambda: call(index, handle), max(0.0, deadline - loop.time()))
            except RayTaskError as error:
                moved = unwrap(error)
                if not isinstance(moved, Moved) or self.placements is None or loop.time() > deadline:
                    raise moved if isinstance(moved, Moved) else error
                if moved.epoch > self.directory.epoch(moved.region):
                    await self.placements.learn(moved.region)
                else:
                    await asyncio.sleep(RETRY_BACKOFF_S)

    def ack(self, session: Session, cursor: int) -> None:
        key = (session.user_id, session.region)
        if cursor > self._acks.get(key, 0):
            self._acks[key] = cursor

    def flush_acks(self) -> list[asyncio.Future]:
        """Send the acks gathered since the last flush, batched by shard (advisory: a lost one is
        carried by the next)."""
        acks, self._acks = self._acks, {}
        return [self.enqueue_at(self.directory.user_index(user_id, region), Ack(user_id, cursor), ACK_TIMEOUT_S)
                for (user_id, region), cursor in acks.items()]

    async def _flush_acks_forever(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_INTERVAL_S)
            self.flush_acks()

    # ---- streams -------------------------------------------------------------------------------

    async def _pump(self, index: int) -> None:
        reconnecting = False
        while True:
            handle = self.directory.handles.get(index)
            if handle is None:  # the shard left the placement (a reshard)
                self._pumps.pop(index, None)
                return
            try:
                if reconnecting:
                    self._count(index, "stream")
                async for ref in handle.stream.remote(self.gateway_id):
                    batch = await ref
                    if reconnecting:  # the first batch (empty): the stream is open at the shard
                        reconnecting = False
                        self._resume_shard(index)
                    self._dispatch(batch)
                reconnecting = True  # the shard ended the stream: it dropped our sockets, or it stopped
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
            for index in list(self._pumps):
                handle = self.directory.handles.get(index)
                if handle is None:
                    continue
                self._count(index, "heartbeat")
                try:
                    handle.heartbeat.remote(self.gateway_id)
                except Exception as error:  # a restarting shard: the next beat reaches it
                    log.debug("heartbeat failed: %s", error)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    def _resume_shard(self, index: int) -> None:
        """Re-attach every local session of a restarted shard, with its last cursor."""
        sessions = [session for user_id, user_sessions in list(self.sessions.items())
                    for session in user_sessions
                    if self.directory.user_index(user_id, session.region) == index and session.begin_reattach()]
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
        handle = self.directory.handles.get(index)
        if handle is None:
            return

        def attach_open_sessions():  # again on each retry, without the sessions closed meanwhile
            nonlocal sessions
            sessions = [session for session in sessions if not session.closed]
            self._count(index, "attach_many")
            return handle.attach_many.remote(
                self.gateway_id, [(s.user_id, s.last_cursor, s.socket_id) for s in sessions])

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
            sessions = self.sessions.get(user_id)
            if sessions:
                for session in sessions:
                    session.push_live(cursor, text)
            elif user_id == PLACEMENT_MARK and self.placements is not None:
                self.placements.heard(text, cursor)  # (mark, epoch, region)

    # ---- reshards (gateway/placement_follower.py) ------------------------------------------------

    def session_indexes(self) -> dict[Session, int]:
        """The shard each local session is attached at, under the placement held now."""
        return {session: self.directory.user_index(user_id, session.region)
                for user_id, sessions in self.sessions.items() for session in sessions}

    def placement_changed(self, region: str, before: dict[Session, int]) -> None:
        """A region's placement moved on: streams to its removed shards stop (their pumps end by
        themselves), its new home shards get streams, and each session whose mailbox moved
        re-attaches at its new shard with its last cursor (the shard replays what it missed)."""
        if region == self.directory.home_region:
            for index in self.directory.home_indexes():
                self.open_stream(index)
        moved: dict[int, list[Session]] = collections.defaultdict(list)
        for session, old_index in before.items():
            new_index = self.directory.user_index(session.user_id, session.region)
            if new_index != old_index and not session.closed and session.begin_reattach():
                moved[new_index].append(session)
        for index, sessions in moved.items():
            self.open_stream(index)
            task = asyncio.create_task(self._reattach_all(index, sessions))
            self._reattaching.add(task)
            task.add_done_callback(self._reattaching.discard)
        if moved:
            log.warning("placement of %s changed: %d sessions re-attach at their new shards",
                        region, sum(map(len, moved.values())))
