"""A mailbox shard: hosts the virtual mailboxes of the users the ring gives it, and sequences the
conversations the ring gives it. Plain asyncio class; remote.py makes it a Ray actor.

Send path inside a shard: gateways call `submit` with a batch of operations; they queue; one writer
thread commits whatever has queued as one transaction (group commit: the next batch forms while
the current one commits, so a lone send never waits for a timer); each operation gets its Outcome;
then the committed mailbox events fan out, one call per destination shard.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Callable

from switchboard.errors import Overloaded, SwitchboardError
from switchboard.protocol import now_ms, typing_frame
from switchboard.storage.models import MailboxEvent
from switchboard.storage.store import StorageUnavailable, Store

from .checkpoint import ShardCheckpoint, collector_paused, decode_shard, encode_shard
from .mailbox import AttachResult, Delivery, MailboxHost
from .ops import Operation, Outcome
from .ring import Ring
from .sequencer import Sequencer

log = logging.getLogger(__name__)

ACK_FLUSH_INTERVAL_S = 2.0
# Gateways heartbeat every few seconds (gateway/delivery.py); one silent for a lease is dropped.
GATEWAY_LEASE_S = 6.0
LEASE_SWEEP_INTERVAL_S = 1.0
# Sends a checkpoint keeps for answering retries from memory after a restart (the sequencer keeps
# more; the sends committed after the checkpoint are replayed from PostgreSQL anyway).
CHECKPOINT_RECENT_SENDS = 10_000
# Pause between chunks of 500 rows while encoding a checkpoint, leaving the cores to the commits:
# about halves the encoding's CPU share; 10,000 mailboxes take ~0.1 s longer to checkpoint.
CHECKPOINT_ENCODE_PAUSE_S = 0.002


class PeerLink:
    """How a shard reaches its peers; the Ray wrapper supplies real actor handles."""

    def deliver(self, shard_index: int, events: list[MailboxEvent]) -> None: ...

    def deliver_ephemeral(self, shard_index: int, user_ids: list[str], frame: dict) -> None: ...


class MailboxShard:
    def __init__(self, *, index: int, ring: Ring, store: Store, peers: PeerLink, max_members: int,
                 commit_batch_max: int, queue_max: int, owner: str | None = None,
                 checkpoint_interval_s: float = 0.0):
        self.index = index
        self.owner = owner or f"shard:{index}"  # the key of its checkpoint
        self.checkpoint_interval_s = checkpoint_interval_s
        self.ring = ring
        self.store = store
        self.peers = peers
        self.commit_batch_max = commit_batch_max
        self.queue_max = queue_max
        self.sequencer = Sequencer(store, max_members=max_members)
        self.mailboxes = MailboxHost(store, run_blocking=asyncio.to_thread)
        # One writer thread: the sequencer's cache and the commit order need exactly one.
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._queue: collections.deque[tuple[Operation, asyncio.Future]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.commits = 0
        self.committed_operations = 0
        self.commit_seconds = 0.0
        self.first_submit_at: float | None = None  # wall clock, for measuring recovery
        self.first_commit_at: float | None = None
        self._checkpoint_lock = asyncio.Lock()
        self.last_checkpoint: dict = {}
        self.restored: dict = {}

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._commit_loop()),
                asyncio.create_task(self._ack_loop()),
                asyncio.create_task(self._lease_loop()),
            ]
            if self.checkpoint_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._checkpoint_loop()))

    # ---- the send path ---------------------------------------------------------------------

    async def submit(self, operations: list[Operation]) -> list[Outcome]:
        self.start()
        if self.first_submit_at is None:
            self.first_submit_at = time.time()
        if len(self._queue) + len(operations) > self.queue_max:
            error = Overloaded(f"shard {self.index} has {len(self._queue)} operations queued")
            return [Outcome.failed(error) for _ in operations]
        loop = asyncio.get_running_loop()
        futures = []
        for operation in operations:
            future = loop.create_future()
            self._queue.append((operation, future))
            futures.append(future)
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                size = min(len(self._queue), self.commit_batch_max)
                batch = [self._queue.popleft() for _ in range(size)]
                operations = [operation for operation, _ in batch]
                started = time.perf_counter()
                try:
                    result = await loop.run_in_executor(self._writer, self.sequencer.commit, operations)
                    outcomes, events = result.outcomes, result.events
                except Exception as error:  # a bug, not a refusal: fail the batch, keep serving
                    log.exception("commit of %d operations failed", len(operations))
                    outcomes = [Outcome.failed(SwitchboardError(f"internal error: {error}")) for _ in batch]
                    events = []
                for (_, future), outcome in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(outcome)
                self.commits += 1
                self.committed_operations += len(batch)
                self.commit_seconds += time.perf_counter() - started
                if self.first_commit_at is None:
                    self.first_commit_at = time.time()
                self._fan_out(events)

    def _fan_out(self, events: list[MailboxEvent]) -> None:
        by_shard = group_by(events, lambda event: self.ring.user_shard(event.user_id))
        for shard_index, shard_events in by_shard.items():
            if shard_index == self.index:
                self.mailboxes.deliver(shard_events)
            else:
                self.peers.deliver(shard_index, shard_events)

    # ---- typing: ephemeral, never stored ---------------------------------------------------

    async def typing(self, conversation_id: str, user_id: str) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            recipients = await loop.run_in_executor(
                self._writer, self.sequencer.members_for_typing, conversation_id, user_id
            )
        except SwitchboardError as error:
            return Outcome.failed(error)
        except StorageUnavailable as error:
            return Outcome.failed(Overloaded(str(error)))
        frame = typing_frame(conversation_id, user_id)
        for shard_index, user_ids in group_by(recipients, self.ring.user_shard).items():
            if shard_index == self.index:
                self.mailboxes.deliver_ephemeral(user_ids, frame)
            else:
                self.peers.deliver_ephemeral(shard_index, user_ids, frame)
        return Outcome(value={})

    # ---- mailboxes ---------------------------------------------------------------------------

    async def attach(self, gateway_id: str, user_id: str, since: int | None) -> AttachResult:
        self.start()
        self.mailboxes.touch(gateway_id, time.monotonic())
        return await self.mailboxes.attach(gateway_id, user_id, since)

    async def attach_many(self, gateway_id: str, sockets: list[tuple[str, int | None]]) -> list[AttachResult]:
        self.start()
        self.mailboxes.touch(gateway_id, time.monotonic())
        return await self.mailboxes.attach_many(gateway_id, sockets)

    def heartbeat(self, gateway_id: str) -> None:
        self.start()
        self.mailboxes.touch(gateway_id, time.monotonic())

    def detach(self, gateway_id: str, user_id: str) -> None:
        self.mailboxes.detach(gateway_id, user_id)

    def ack(self, user_id: str, cursor: int) -> None:
        self.mailboxes.ack(user_id, cursor)

    def deliver(self, events: list[MailboxEvent]) -> None:
        self.mailboxes.deliver(events)

    def deliver_ephemeral(self, user_ids: list[str], frame: dict) -> None:
        self.mailboxes.deliver_ephemeral(user_ids, frame)

    async def stream(self, gateway_id: str) -> AsyncIterator[list[Delivery]]:
        """Deliveries for one gateway replica, in batches, for as long as it listens. The first
        batch is empty and comes at once: it tells the gateway the stream is open here, so that
        re-attaching its sockets now misses nothing (a call to a restarting shard fails at once,
        so the call having been made says nothing)."""
        self.start()
        self.mailboxes.touch(gateway_id, time.monotonic())
        outbox = self.mailboxes.open_outbox(gateway_id)
        try:
            yield []
            while self.mailboxes.current_outbox(gateway_id) is outbox:
                items = await outbox.take()
                if items:
                    yield items
        finally:
            if self.mailboxes.current_outbox(gateway_id) is outbox:
                self.mailboxes.drop_gateway(gateway_id)

    def stats(self) -> dict:
        return {
            "index": self.index,
            "online_users": self.mailboxes.online_users(),
            "queued": len(self._queue),
            "commits": self.commits,
            "committed_operations": self.committed_operations,
            "commit_seconds": round(self.commit_seconds, 3),
            "conversation_loads": self.sequencer.loads,
            "replans": self.sequencer.replans,
            "first_submit_at": self.first_submit_at,
            "first_commit_at": self.first_commit_at,
            "restored": self.restored,
            "last_checkpoint": self.last_checkpoint,
        }

    # ---- checkpoints (actors/checkpoint.py) ---------------------------------------------------

    async def checkpoint(self) -> dict:
        """Write this shard's state to PostgreSQL (periodically, and on drain); returns figures.

        Commits go on meanwhile: the sequencer's part is captured on the writer thread between
        two commits (references only, ~1 ms), the mailboxes' on the event loop; encoding and the
        write run on another thread, in chunks that never hold the GIL for long."""
        async with self._checkpoint_lock:
            started = time.perf_counter()
            # The capture and the encoding make ~80,000 short-lived objects; with the cyclic
            # collector running they triggered full collections (~0.23 s, every thread stopped).
            with collector_paused():
                conversations, sends = await asyncio.get_running_loop().run_in_executor(
                    self._writer, self.sequencer.snapshot, CHECKPOINT_RECENT_SENDS
                )
                mailboxes, gateways = self.mailboxes.snapshot()
                checkpoint = ShardCheckpoint(
                    owner=self.owner, shard_count=self.ring.shard_count, taken_at=now_ms(),
                    commits=self.commits, conversations=conversations, recent_sends=sends,
                    mailboxes=mailboxes, gateways=gateways,
                )
                state = await asyncio.to_thread(encode_shard, checkpoint, CHECKPOINT_ENCODE_PAUSE_S)
            await asyncio.to_thread(self.store.save_checkpoint, self.owner, checkpoint.taken_at, state)
            self.last_checkpoint = {
                "taken_at": checkpoint.taken_at, "bytes": len(state), "conversations": len(conversations),
                "recent_sends": len(sends), "mailboxes": len(mailboxes), "gateways": len(gateways),
                "seconds": round(time.perf_counter() - started, 4),
            }
            return self.last_checkpoint

    def restore(self) -> dict:
        """Load the last checkpoint and replay what came after it; call before serving (blocking).
        Without a usable checkpoint the shard starts empty and loads lazily, as it always could."""
        with collector_paused():
            return self._restore()

    def _restore(self) -> dict:
        started = time.perf_counter()
        stored = self.store.load_checkpoint(self.owner)
        checkpoint = decode_shard(stored.state) if stored is not None else None
        if checkpoint is not None and checkpoint.shard_count != self.ring.shard_count:
            log.warning("checkpoint of %s was taken with %d shards, not %d: not used",
                        self.owner, checkpoint.shard_count, self.ring.shard_count)
            checkpoint = None
        if checkpoint is None:
            self.restored = {"loaded": False}
            return self.restored
        loaded = time.perf_counter()
        sequencer = self.sequencer.restore(checkpoint.conversations, checkpoint.recent_sends)
        heads = self.store.mailbox_heads([record.user_id for record in checkpoint.mailboxes])
        mailboxes = self.mailboxes.restore(checkpoint.mailboxes, checkpoint.gateways, heads, time.monotonic())
        self.restored = {
            "loaded": True, "taken_at": checkpoint.taken_at, "bytes": len(stored.state),
            "load_seconds": round(loaded - started, 4),
            "replay_seconds": round(time.perf_counter() - loaded, 4),
            **sequencer, **{f"mailbox_{key}": value for key, value in mailboxes.items()},
        }
        return self.restored

    async def _checkpoint_loop(self) -> None:
        written = None
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            state = (self.commits, self.mailboxes.online_users())
            if state == written:
                continue  # nothing committed and nobody came or went: the stored one is current
            try:
                await self.checkpoint()
                written = state
            except Exception as error:  # the next round tries again; a restart replays more meanwhile
                log.warning("checkpoint of %s failed: %s", self.owner, error)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SWEEP_INTERVAL_S)
            now = time.monotonic()
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
