"""A mailbox shard: hosts the virtual mailboxes of the users the ring gives it, and sequences the
conversations the ring gives it. Plain asyncio class; remote.py makes it a Ray actor.

Send path inside a shard: gateways call `submit` with a batch of operations. The sequenced ones
(sends, creates, membership, read marks) queue for the one writer thread (commit_queue.py: group
commit, deadlines, bounds); each gets its Outcome; then the committed mailbox events fan out, one
call per destination shard. The others in the same call never wait behind a commit: typing
(typing_relay.py), token leases of the per-user budgets (budgets.py) and acks are answered on the
event loop at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable

from switchboard.errors import Invalid, Overloaded, SwitchboardError
from switchboard.protocol import typing_frame
from switchboard.storage.models import MailboxEvent
from switchboard.storage.store import StorageUnavailable, Store

from .budgets import Budget, UserBudgets
from .commit_queue import CommitQueue
from .home_regions import HomeRegions
from .mailbox import AttachResult, Delivery, MailboxHost
from .ops import SEQUENCED, Ack, CreateConversation, Operation, Outcome, TakeTokens, Typing
from .placement import PLACEMENT_MARK, Ownership
from .ring import Ring
from .sequencer import Sequencer
from .shard_checkpoint import ShardCheckpointing
from .typing_relay import TypingRelay

log = logging.getLogger(__name__)

ACK_FLUSH_INTERVAL_S = 2.0
# Gateways heartbeat every few seconds (gateway/delivery.py); one silent for a lease is dropped.
GATEWAY_LEASE_S = 6.0
LEASE_SWEEP_INTERVAL_S = 1.0
# An operation that arrives without a deadline (an older gateway, a test) gets this one.
DEFAULT_TIME_LEFT_S = 5.0
DATABASE_UNAVAILABLE = "the database is unavailable; retry later"


class PeerLink:
    """How a shard reaches its peers; the Ray wrapper supplies real actor handles. Another
    region's peers are reached by region: the link knows that region's ring, and makes one call
    per destination shard there (the one hop a batch's events make across regions)."""

    def deliver(self, shard_index: int, events: list[MailboxEvent]) -> None: ...

    def forward(self, shard_index: int, events: list[MailboxEvent]) -> None:
        """deliver, marked as forwarded: the receiver never forwards it again."""

    def forward_ephemeral(self, shard_index: int, user_ids: list[str], frame: dict) -> None: ...

    def forget_handles(self) -> None:
        """The region resharded: handles kept by index may name stopped actors."""

    def deliver_ephemeral(self, shard_index: int, user_ids: list[str], frame: dict) -> None: ...

    def deliver_abroad(self, region: str, events: list[MailboxEvent]) -> None: ...

    def deliver_ephemeral_abroad(self, region: str, user_ids: list[str], frame: dict) -> None: ...


class MailboxShard:
    def __init__(self, *, index: int, ring: Ring, store: Store, peers: PeerLink, max_members: int,
                 commit_batch_max: int, queue_max: int, owner: str | None = None,
                 checkpoint_interval_s: float = 0.0, commit_events_max: int | None = None,
                 budgets: dict[str, Budget] | None = None, send_timeout_s: float = DEFAULT_TIME_LEFT_S,
                 max_sockets_per_user: int | None = None, region: str = "local",
                 homes: HomeRegions | None = None, clock: Callable[[], float] = time.monotonic,
                 epoch: int = 1):
        self.index = index
        self.region = region
        # What this shard owns under its region's current placement (resharding.py moves it on).
        self.ownership = Ownership(region, index, ring.shard_count, epoch)
        # Where each recipient's mailbox lives; one region only unless told otherwise.
        self.homes = homes or HomeRegions([region], region)
        self.owner = owner or f"shard:{index}"  # the key of its checkpoint
        self.store = store
        self.peers = peers
        self.clock = clock
        self.send_timeout_s = send_timeout_s
        self.max_sockets_per_user = max_sockets_per_user
        self.sequencer = Sequencer(store, max_members=max_members, ownership=self.ownership)
        self.queue = CommitQueue(self.sequencer, batch_max=commit_batch_max, events_max=commit_events_max,
                                 queue_max=queue_max, on_committed=self._fan_out, name=self.owner, clock=clock)
        # With several regions, a socket attaching here records that its user's mailbox is here.
        self.mailboxes = MailboxHost(store, run_blocking=asyncio.to_thread,
                                     home_region=None if self.homes.single else region)
        self.typing_relay = TypingRelay(self.sequencer.cache, store, run_blocking=asyncio.to_thread, clock=clock)
        self.budgets = UserBudgets(budgets or {})
        self.checkpoints = ShardCheckpointing(self, checkpoint_interval_s)
        self._tasks: list[asyncio.Task] = []
        self._refreshing: asyncio.Future | None = None
        self._adoption: dict = {}  # the figures of the last placement adopted
        self.first_submit_at: float | None = None  # wall clock, for measuring recovery

    @property
    def commits(self) -> int:
        return self.queue.commits

    @property
    def ring(self) -> Ring:
        return self.ownership.view.ring

    @property
    def epoch(self) -> int:
        return self.ownership.view.epoch

    def start(self) -> None:
        if not self._tasks:
            event_loop = asyncio.get_running_loop()
            # Called on the writer thread when the database refused this shard's epoch.
            self.ownership.on_stale = lambda: event_loop.call_soon_threadsafe(self.placement_refresh_wanted)
            self._tasks = [asyncio.create_task(self.queue.run()), asyncio.create_task(self._ack_loop()),
                           asyncio.create_task(self._lease_loop())]
            if (loop := self.checkpoints.loop()) is not None:
                self._tasks.append(asyncio.create_task(loop))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.queue.shutdown()

    # ---- the one call gateways make per batch ------------------------------------------------

    async def submit(self, operations: list[Operation], time_left_s: list[float] | None = None) -> list[Outcome]:
        """Answer a batch, in order. time_left_s[i] is how long operation i may take before its
        sender must be answered (the gateway's send timeout, less what it waited there)."""
        self.start()
        if self.first_submit_at is None:
            self.first_submit_at = time.time()
        now = self.clock()
        left = time_left_s or [self.send_timeout_s] * len(operations)
        answers: list[asyncio.Future | Outcome | None] = [None] * len(operations)
        sequenced, deadlines, positions = [], [], []
        for position, (operation, seconds) in enumerate(zip(operations, left, strict=True)):
            if isinstance(operation, SEQUENCED):
                if isinstance(operation, CreateConversation):
                    # A conversation's region is its creator's home: known before their mailbox
                    # records it (a creator who has not attached a socket yet).
                    self.homes.learn(operation.creator, operation.region)
                sequenced.append(operation)
                deadlines.append(now + seconds)
                positions.append(position)
            else:
                answers[position] = self._answer_now(operation, now)
        for position, future in zip(positions, self.queue.submit(sequenced, deadlines)):
            answers[position] = future
        return [await answer if isinstance(answer, asyncio.Future) else answer for answer in answers]

    def _answer_now(self, operation: Operation, now: float) -> Outcome | asyncio.Future:
        view = self.ownership.view
        if isinstance(operation, Typing):  # may read the database: a task, not in the way
            if not view.owns_conversation(operation.conversation_id):
                return Outcome.failed(view.moved())
            return asyncio.ensure_future(self.typing(operation.conversation_id, operation.user_id))
        if isinstance(operation, TakeTokens):
            if not view.owns_user(operation.user_id):  # the budget lives with the user's mailbox
                return Outcome.failed(view.moved())
            try:
                grant = self.budgets.take(operation.user_id, operation.kind, operation.wanted, now)
            except ValueError as error:
                return Outcome.failed(Invalid(str(error)))
            return Outcome(value={"granted": grant.granted, "retry_after_s": grant.retry_after_s})
        if isinstance(operation, Ack):
            self.mailboxes.ack(operation.user_id, operation.cursor)
            return Outcome(value={})
        return Outcome.failed(Invalid(f"unknown operation {type(operation).__name__}"))

    def _fan_out(self, events: list[MailboxEvent]) -> None:
        """Each event to its recipient's home region: this region's by the ring, another
        region's in one hand-off per region (the peer link splits it by that region's ring)."""
        by_region = group_by(events, lambda event: self.homes.home(event.user_id, event.region, self.region))
        for region, region_events in by_region.items():
            if region != self.region:
                self.peers.deliver_abroad(region, region_events)
                continue
            for shard_index, shard_events in group_by(region_events, lambda e: self.ring.user_shard(e.user_id)).items():
                if shard_index == self.index:
                    self.mailboxes.deliver(shard_events)
                else:
                    self.peers.deliver(shard_index, shard_events)

    # ---- typing: ephemeral, never stored, never on the writer thread --------------------------

    async def typing(self, conversation_id: str, user_id: str) -> Outcome:
        try:
            recipients = await self.typing_relay.recipients(conversation_id, user_id)
            homes = await self.homes.homes(recipients)
        except SwitchboardError as error:
            return Outcome.failed(error)
        except StorageUnavailable as error:
            log.warning("typing lookup failed: %s", error)
            return Outcome.failed(Overloaded(DATABASE_UNAVAILABLE))
        frame = typing_frame(conversation_id, user_id)
        for region, user_ids in group_by(recipients, homes.__getitem__).items():
            if region != self.region:
                self.peers.deliver_ephemeral_abroad(region, user_ids, frame)
                continue
            for shard_index, shard_users in group_by(user_ids, self.ring.user_shard).items():
                if shard_index == self.index:
                    self.mailboxes.deliver_ephemeral(shard_users, frame)
                else:
                    self.peers.deliver_ephemeral(shard_index, shard_users, frame)
        return Outcome(value={})

    # ---- mailboxes ---------------------------------------------------------------------------

    async def attach(self, gateway_id: str, user_id: str, since: int | None, socket_id: int | None = None,
                     fresh: bool = False) -> AttachResult:
        """A socket goes live; `fresh` (a new connection, not a re-attach) counts against the
        user's socket cap."""
        self.start()
        self._require_users([user_id])
        self.mailboxes.touch(gateway_id, self.clock())
        cap = self.max_sockets_per_user if fresh else None
        return await self.mailboxes.attach(gateway_id, user_id, since, socket_id, max_sockets=cap)

    async def attach_many(self, gateway_id: str, sockets: list[tuple]) -> list[AttachResult]:
        self.start()
        self._require_users([user_id for user_id, *_ in sockets])
        self.mailboxes.touch(gateway_id, self.clock())
        return await self.mailboxes.attach_many(gateway_id, sockets)

    def _require_users(self, user_ids: list[str]) -> None:
        """A socket attaches only where its user's mailbox is under the current placement: one
        attached to the old owner after a reshard would hear nothing (fan-out follows the ring)."""
        view = self.ownership.view
        if not all(view.owns_user(user_id) for user_id in user_ids):
            raise view.moved()

    async def replay(self, user_id: str, after: int, limit: int) -> AttachResult:
        return await self.mailboxes.replay(user_id, after, limit)

    def heartbeat(self, gateway_id: str) -> None:
        self.start()
        self.mailboxes.touch(gateway_id, self.clock())

    def detach(self, gateway_id: str, user_id: str, socket_id: int | None = None) -> None:
        self.mailboxes.detach(gateway_id, user_id, socket_id)

    def ack(self, user_id: str, cursor: int) -> None:
        self.mailboxes.ack(user_id, cursor)

    def deliver(self, events: list[MailboxEvent], forwarded: bool = False) -> None:
        """Events for mailboxes hosted here. Ones for users another shard owns now (a sender
        that had not yet heard of a reshard) go on to that shard, once."""
        if not forwarded:
            view = self.ownership.view
            elsewhere = [event for event in events if not view.owns_user(event.user_id)]
            if elsewhere:
                events = [event for event in events if view.owns_user(event.user_id)]
                for shard_index, shard_events in group_by(elsewhere, lambda e: view.ring.user_shard(e.user_id)).items():
                    self.peers.forward(shard_index, shard_events)
        self.mailboxes.deliver(events)

    def deliver_ephemeral(self, user_ids: list[str], frame: dict, forwarded: bool = False) -> None:
        if not forwarded:
            view = self.ownership.view
            elsewhere = [user_id for user_id in user_ids if not view.owns_user(user_id)]
            if elsewhere:
                user_ids = [user_id for user_id in user_ids if view.owns_user(user_id)]
                for shard_index, users in group_by(elsewhere, view.ring.user_shard).items():
                    self.peers.forward_ephemeral(shard_index, users, frame)
        self.mailboxes.deliver_ephemeral(user_ids, frame)

    # ---- resharding --------------------------------------------------------------------------

    async def adopt(self, shard_count: int, epoch: int) -> dict:
        """Work from a newer placement: let go of the conversations and mailboxes another shard
        owns now (what is queued for them is answered Moved when the writer reaches it; their
        sockets re-attach at the new owner, the gateway told by announce_placement). Called
        after the database's epoch moved, so nothing planned under the old one can commit."""
        if not self.ownership.adopt(shard_count, epoch):
            # Already adopted (by refresh_placement after a refused commit, say): the same figures.
            return self._adoption if self._adoption.get("epoch") == epoch else {"adopted": False, "epoch": self.epoch}
        view = self.ownership.view
        self.peers.forget_handles()
        # On the writer thread, between two commits: the cache is the writer's.
        conversations = await self.queue.in_writer(self.sequencer.let_go, view.owns_conversation)
        mailboxes = self.mailboxes.let_go(view.owns_user)
        log.warning("%s adopted %d shards (epoch %d): let go of %d conversations, %d mailboxes",
                    self.owner, shard_count, epoch, conversations, mailboxes)
        self._adoption = {"adopted": True, "epoch": epoch, "conversations_moved": conversations,
                          "mailboxes_moved": mailboxes, "conversations_kept": len(self.sequencer.cache),
                          "mailboxes_kept": self.mailboxes.online_users()}
        return self._adoption

    def announce_placement(self) -> None:
        """Tell every gateway replica streaming from this shard that the placement moved on."""
        self.mailboxes.announce((PLACEMENT_MARK, self.epoch, self.region))

    def placement_refresh_wanted(self) -> None:
        """The database refused a commit's epoch: read the placement and adopt it (the router
        normally tells every shard itself; this is for a shard it could not reach)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh_placement())

    async def refresh_placement(self) -> None:
        try:
            stored = await asyncio.to_thread(self.store.placements.load, self.region)
        except Exception as error:
            log.warning("%s could not read its placement: %s", self.owner, error)
            return
        if stored is not None and (await self.adopt(stored.shard_count, stored.epoch))["adopted"]:
            self.announce_placement()

    async def stream(self, gateway_id: str) -> AsyncIterator[list[Delivery]]:
        """Deliveries for one gateway replica, in batches, for as long as it listens. The first
        batch is empty and comes at once: it tells the gateway the stream is open here, so that
        re-attaching its sockets now misses nothing (a call to a restarting shard fails at once,
        so the call having been made says nothing). An outbox that overflowed ends the stream
        and forgets the replica's sockets: it re-attaches them on its next stream."""
        self.start()
        self.mailboxes.touch(gateway_id, self.clock())
        outbox = self.mailboxes.open_outbox(gateway_id)
        try:
            yield []
            while self.mailboxes.current_outbox(gateway_id) is outbox and not outbox.overflowed:
                items = await outbox.take()
                if items and not outbox.overflowed:
                    yield items
            if outbox.overflowed:
                log.warning("gateway %s fell too far behind its stream: its sockets re-attach", gateway_id)
        finally:
            if self.mailboxes.current_outbox(gateway_id) is outbox:
                self.mailboxes.drop_gateway(gateway_id)

    # ---- health and figures ------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or committing (before a planned move), for up to
        timeout_s: every operation accepted so far is then committed and answered."""
        deadline = time.monotonic() + timeout_s
        while len(self.queue) or self.queue.commit_started is not None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def health(self) -> dict:
        problem = self.queue.health(self.send_timeout_s)
        return {"ok": problem is None, "problem": problem, "queued": len(self.queue)}

    def stats(self) -> dict:
        return {
            "index": self.index,
            "epoch": self.epoch,
            "shard_count": self.ring.shard_count,
            "online_users": self.mailboxes.online_users(),
            "queued": len(self.queue),
            "commits": self.queue.commits,
            "committed_operations": self.queue.committed_operations,
            "commit_seconds": round(self.queue.commit_seconds, 3),
            "expired_operations": self.queue.expired,
            "conversation_loads": self.sequencer.loads,
            "typing_loads": self.typing_relay.loads,
            "replans": self.sequencer.replans,
            "budgets": len(self.budgets),
            "first_submit_at": self.first_submit_at,
            "first_commit_at": self.queue.first_commit_at,
            "restored": self.checkpoints.restored,
            "last_checkpoint": self.checkpoints.last,
        }

    # ---- checkpoints (shard_checkpoint.py) ----------------------------------------------------

    async def checkpoint(self) -> dict:
        return await self.checkpoints.take()

    def restore(self) -> dict:
        return self.checkpoints.restore()

    # ---- housekeeping ------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SWEEP_INTERVAL_S)
            now = self.clock()
            for gateway_id in self.mailboxes.expire_gateways(now, GATEWAY_LEASE_S):
                log.warning("gateway %s silent for %.0f s: dropped its sockets", gateway_id, GATEWAY_LEASE_S)
            if dropped := self.mailboxes.expire_restored(now):
                log.info("%d restored sockets were not re-attached by their gateway: dropped", dropped)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_INTERVAL_S)
            acks = self.mailboxes.take_acks()
            if acks:
                try:
                    await asyncio.to_thread(self.store.record_acks, acks)
                except Exception as error:  # acks are advisory; the next ones carry the news
                    log.warning("could not record %d acks: %s", len(acks), error)


def group_by(items, key: Callable) -> dict:
    grouped: dict = collections.defaultdict(list)
    for item in items:
        grouped[key(item)].append(item)
    return grouped
