"""The Ray edge: the plain classes of this package made into named, detached, restartable actors.

This is the only module that applies ray.remote. Each actor builds its own database engine from
the settings it is handed (actors never read the environment). On a start or restart it loads its
checkpoint and replays what changed after it before it serves (actors/checkpoint.py); whatever the
checkpoint does not hold is still loaded lazily: a conversation on first use, a mailbox when a
socket attaches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import time

import ray

from switchboard.protocol import now_ms
from switchboard.settings import Settings
from switchboard.storage.database import make_engine, warm_up
from switchboard.storage.sql_store import SqlStore
from switchboard.tuning import tune_interpreter

from . import handback, registry, resharding
from .budgets import Budget
from .checkpoint import decode_router, encode_router
from .periodic import checkpoint_periodically
from .ring import Ring
from .router import Placement, RegionRouter
from .home_regions import HomeRegions
from .peers import RayPeers
from .shard import MailboxShard
from .startup import StartupClock

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600
# A restarted router whose retention run is overdue waits this long first, so a router restarting
# in a loop does not prune on every start.
RETENTION_AFTER_START_S = 60
# Connections a shard opens before it serves: the writer's, and one for reads (restore, attach).
SHARD_WARM_CONNECTIONS = 2
# Unread batches a delivery stream may run ahead of its gateway replica (Ray's generator
# backpressure); past it the shard's outbox for that replica fills, and is bounded there.
STREAM_BACKLOG = 64
# The per-user budgets (actors/budgets.py) gateways lease tokens of.
SEND_BUDGET = "send"
MEMBERSHIP_BUDGET = "membership"


def after_start(method):
    """An actor method that waits for the actor's restore to finish before it runs (DESIGN.md: a
    restarted actor rebuilds its state before it serves)."""
    @functools.wraps(method)
    async def waiting(self, *args, **kwargs):
        await self._started.wait()
        return await method(self, *args, **kwargs)
    return waiting


def shard_budgets(settings: Settings) -> dict[str, Budget]:
    """The per-user budgets a shard keeps for the users it hosts (actors/budgets.py)."""
    return {SEND_BUDGET: Budget(settings.send_rate_per_s, settings.send_burst),
            MEMBERSHIP_BUDGET: Budget(settings.membership_rate_per_s, settings.membership_burst)}


@ray.remote
class ShardActor:
    """Serves nothing before its state is restored: every method first waits for `_started`.

    Connecting and restoring (~0.3 s for 10,000 mailboxes) run on a thread right after the
    constructor, not in it: Ray takes another 0.5-2 s after a restarted actor's constructor
    returns before callers' calls reach it, and the restore overlaps that wait instead of adding
    to it. Calls that do arrive early wait for it, so the DESIGN.md rule holds all the same.

    The ring's size comes from the router's placement (`shard_count`), never from the settings:
    one source for it, so a shard and the gateways can never disagree about who owns a key."""

    def __init__(self, settings: Settings, database_url: str, region: str, index: int, shard_count: int,
                 epoch: int = 1):
        self.clock = StartupClock()  # the constructor starts once Ray has unpickled (imported) the class
        self.index = index
        self.send_timeout_s = settings.send_timeout_s
        tune_interpreter()
        self.engine = make_engine(database_url, pool_size=4, statement_timeout_s=settings.db_statement_timeout_s)
        store = SqlStore(self.engine)
        self.peers = RayPeers(settings, region)
        self.shard = MailboxShard(
            index=index,
            ring=Ring(shard_count),
            store=store,
            peers=self.peers,
            region=region,
            homes=HomeRegions(settings.regions, settings.region, store, asyncio.to_thread),
            max_members=settings.max_members,
            commit_batch_max=settings.commit_batch_max,
            commit_events_max=settings.commit_events_max,
            queue_max=settings.shard_queue_max,
            owner=registry.shard_name(region, index),
            checkpoint_interval_s=settings.checkpoint_interval_s,
            budgets=shard_budgets(settings),
            send_timeout_s=settings.send_timeout_s,
            max_sockets_per_user=settings.sockets_per_user,
            epoch=epoch,
        )
        self.region = region
        self.started_at = time.time()
        self._started = asyncio.Event()
        try:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        except RuntimeError:  # no running loop here after all: start before the constructor returns
            self._restore()
            self._started.set()

    async def _start(self) -> None:
        await asyncio.to_thread(self._restore)
        # The restored state (~200,000 objects for 10,000 mailboxes) lives as long as the process:
        # out of the collector's sight like the imports tune_interpreter froze, or every full
        # collection would walk it (~0.2 s, every thread stopped).
        gc.freeze()
        self.shard.start()
        self.clock.mark("ready")
        self._started.set()

    def _restore(self) -> None:
        # Never let the database stop the shard: whatever is not restored is loaded lazily later.
        try:
            warm_up(self.engine, SHARD_WARM_CONNECTIONS)
            self.clock.mark("connected")
            # Ray restarts an actor with its first constructor arguments: the shard count they
            # name may be several reshards old. PostgreSQL has the current one.
            stored = self.shard.store.placements.load(self.region)
            if stored is not None:
                self.shard.ownership.adopt(stored.shard_count, stored.epoch)
            self.shard.restore()
        except Exception as error:
            log.warning("shard %d starts without its checkpoint: %s", self.index, error)
        self.clock.mark("restored")

    @after_start
    async def submit(self, operations, time_left_s=None):
        """A batch of operations (actors/ops.py), answered in order: the one call per batch."""
        return await self.shard.submit(operations, time_left_s)

    @after_start
    async def attach(self, gateway_id, user_id, since, socket_id=None, fresh=False):
        return await self.shard.attach(gateway_id, user_id, since, socket_id, fresh)

    @after_start
    async def attach_many(self, gateway_id, sockets):
        """[(user_id, since, socket_id), ...] -> [AttachResult, ...]: a gateway re-attaching its sockets."""
        return await self.shard.attach_many(gateway_id, sockets)

    @after_start
    async def replay(self, user_id, after, limit):
        return await self.shard.replay(user_id, after, limit)

    @after_start
    async def heartbeat(self, gateway_id):
        self.shard.heartbeat(gateway_id)

    @after_start
    async def detach(self, gateway_id, user_id, socket_id=None):
        self.shard.detach(gateway_id, user_id, socket_id)

    @after_start
    async def deliver(self, events, forwarded=False):
        self.shard.deliver(events, forwarded)

    @after_start
    async def deliver_ephemeral(self, user_ids, frame, forwarded=False):
        self.shard.deliver_ephemeral(user_ids, frame, forwarded)

    @after_start
    async def adopt(self, shard_count, epoch):
        """Work from the region's new placement (actors/resharding.py step 3)."""
        return await self.shard.adopt(shard_count, epoch)

    @after_start
    async def announce_placement(self):
        self.shard.announce_placement()

    async def forget_ring(self, region):
        """Another region resharded: learn its ring again on the next delivery there."""
        self.peers.forget_ring(region)

    @ray.method(_generator_backpressure_num_objects=STREAM_BACKLOG)
    async def stream(self, gateway_id):
        await self._started.wait()  # an async generator: after_start does not wrap those
        async for batch in self.shard.stream(gateway_id):
            yield batch

    @after_start
    async def checkpoint(self):
        return await self.shard.checkpoint()

    @after_start
    async def prepare_handoff(self):
        """Before a planned move (actors/handback.py): commit and answer what is queued, then
        checkpoint, so the restart at home replays next to nothing."""
        drained = await self.shard.drain(self.send_timeout_s)
        return {"drained": drained, **(await self.shard.checkpoint())}

    async def health(self):
        """Answers during a restore too (then not ok): a gateway's /v1/health asks it."""
        if not self._started.is_set():
            return {"ok": False, "problem": "restoring", "queued": 0}
        return self.shard.health()

    @after_start
    async def sockets_of(self, user_id):
        """{gateway replica id: sockets of user_id there}."""
        return self.shard.mailboxes.sockets_of(user_id)

    @after_start
    async def stats(self):
        return {**self.shard.stats(), "cross_region_calls": dict(self.peers.cross_region_calls),
                "started_at": self.started_at, "startup": self.clock.stamps, "pid": os.getpid()}


@ray.remote
class RouterActor:
    """One per region: creates (or finds) the region's shards and hands out the placement."""

    def __init__(self, settings: Settings, database_url: str, region: str):
        self.settings = settings
        self.database_url = database_url
        self.region = region
        self._store = SqlStore(make_engine(database_url, pool_size=2))
        shard_count, epoch = self._stored_placement()
        names = [registry.shard_name(region, i) for i in range(shard_count)]
        self.router = RegionRouter(region, settings.namespace, names, registry.router_name(region), now_ms(), epoch)
        self.restored = self._restore()
        self.shards = self._create_shards(range(shard_count), shard_count, epoch)
        self._resharding = asyncio.Lock()
        self._housekeeping = None
        self._checkpointing = None
        self._start_housekeeping()
        self.started_at = time.time()

    def _stored_placement(self) -> tuple[int, int]:
        """The region's shard count and epoch from PostgreSQL (the settings' count seeds a new
        region; after that only `switchboard scale` changes it)."""
        try:
            stored = self._store.placements.ensure(self.region, self.settings.shards_per_region)
        except Exception as error:  # never fail the constructor; shards read it again as they restore
            log.warning("router of %s could not read its placement (%s): %d shards from the settings",
                        self.region, error, self.settings.shards_per_region)
            return self.settings.shards_per_region, 1
        if stored.shard_count != self.settings.shards_per_region:
            log.warning("%s runs %d shards (its stored placement, epoch %d); SWITCHBOARD_SHARDS_PER_REGION=%d "
                        "only seeds a new region: use `switchboard scale`", self.region, stored.shard_count,
                        stored.epoch, self.settings.shards_per_region)
        return stored.shard_count, stored.epoch

    def _create_shards(self, indexes, shard_count: int, epoch: int) -> list:
        """Get or create the shards with these indexes (named, so a restarted router finds its own)."""
        labelled = registry.labelled_regions()
        return [ShardActor.options(**registry.actor_options(
                    self.settings, registry.shard_name(self.region, index), self.region, labelled)).remote(
                    self.settings, self.database_url, self.region, index, shard_count, epoch)
                for index in indexes]

    async def reshard(self, shard_count: int) -> dict:
        """Change the region's shard count while it serves (actors/resharding.py)."""
        async with self._resharding:
            placement = self.router.placement
            steps = resharding.ReshardSteps(
                # Created under the current count, a new shard owns nothing until it adopts.
                create_shards=lambda indexes: dict(zip(indexes, self._create_shards(
                    indexes, placement.shard_count, placement.epoch))),
                advance=lambda new, old: self._advance(new, old),
                publish=self._publish,
                tell_other_regions=self._tell_other_regions,
                retire=self._retire,
            )
            result = await resharding.reshard(self.region, dict(enumerate(self.shards)), shard_count, steps)
            serving = result.pop("shards")
            self.shards = [serving[index] for index in range(self.router.placement.shard_count)]
            try:
                await self.checkpoint()
            except Exception as error:  # the reshard is done: the placement lives in PostgreSQL
                log.warning("router checkpoint after the reshard failed: %s", error)
            return result

    async def _advance(self, new_count: int, old_count: int) -> int:
        stored = await asyncio.to_thread(self._store.placements.advance, self.region, new_count, old_count)
        return stored.epoch

    def _publish(self, shard_count: int, epoch: int) -> None:
        self.router.placement = dataclasses.replace(
            self.router.placement, epoch=epoch,
            shard_names=tuple(registry.shard_name(self.region, index) for index in range(shard_count)))

    def _tell_other_regions(self) -> None:
        for region in self.settings.regions:
            if region == self.region:
                continue
            try:
                registry.get_actor(self.settings, registry.router_name(region)).forget_ring.remote(self.region)
            except ValueError:  # that region's router is not running
                pass

    async def forget_ring(self, region: str) -> None:
        """Another region resharded: every shard here learns its ring again."""
        for shard in self.shards:
            shard.forget_ring.remote(region)

    async def _retire(self, index: int, handle) -> None:
        """A removed shard: stopped for good (its checkpoint stays; a later scale-up that brings
        the index back restores what that shard owns then, each item checked against the tables)."""
        try:
            await handle.checkpoint.remote()
        except Exception as error:
            log.warning("removed shard %d of %s: no last checkpoint (%s)", index, self.region, error)
        ray.kill(handle, no_restart=True)

    def _restore(self) -> bool:
        try:
            stored = self._store.load_checkpoint(self.router.owner)
            checkpoint = decode_router(stored.state) if stored is not None else None
        except Exception as error:  # never fail the constructor (Ray would not restart the actor)
            log.warning("router %s starts without its checkpoint: %s", self.router.owner, error)
            return False
        if checkpoint is not None:
            self.router.restore(checkpoint)
        return checkpoint is not None

    async def placement(self) -> Placement:
        self._start_housekeeping()
        return self.router.placement

    async def checkpoint(self) -> dict:
        """Write the router's state to PostgreSQL (periodically, on drain, after retention)."""
        snapshot = self.router.snapshot(now_ms())
        await asyncio.to_thread(self._store.save_checkpoint, snapshot.owner, snapshot.taken_at, encode_router(snapshot))
        return {"taken_at": snapshot.taken_at, "epoch": snapshot.epoch,
                "retention_last_run": snapshot.retention_last_run}

    async def info(self) -> dict:
        """The router's own state (stats() is its shards')."""
        self._start_housekeeping()
        placement = self.router.placement
        return {"region": placement.region, "shard_names": placement.shard_names, "epoch": placement.epoch,
                "retention_last_run": self.router.retention_last_run, "restored": self.restored,
                "started_at": self.started_at}

    async def ready(self) -> bool:
        """True once every shard of the region answers."""
        self._start_housekeeping()
        await asyncio.gather(*(shard.stats.remote() for shard in self.shards))
        return True

    async def stats(self) -> list[dict]:
        return list(await asyncio.gather(*(shard.stats.remote() for shard in self.shards)))

    async def prune_mailboxes(self) -> int:
        return await asyncio.to_thread(
            self._store.prune_mailboxes, self.settings.retention_days, self.settings.retention_events, now_ms()
        )

    def _start_housekeeping(self) -> None:
        """Start the router's loops; from the constructor (Ray runs an async actor's constructor
        on its event loop) or, failing a running loop there, from its first call."""
        if self._housekeeping is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._housekeeping = asyncio.create_task(self._retention_loop())
        self._handback = asyncio.create_task(self._handback_loop())
        if self.settings.checkpoint_interval_s > 0:
            self._checkpointing = asyncio.create_task(checkpoint_periodically(
                self.settings.checkpoint_interval_s, lambda: (self.router.placement, self.router.retention_last_run),
                self.checkpoint, self.router.owner))

    async def _handback_loop(self) -> None:
        while True:
            await asyncio.sleep(handback.CHECK_INTERVAL_S)
            try:
                await self._hand_back()
            except Exception as error:
                log.warning("hand back of %s: %s", self.router.placement.region, error)

    async def _hand_back(self) -> None:
        """Move this region's actors home once its nodes are back (actors/handback.py)."""
        region = self.router.placement.region
        shard_names = list(self.router.placement.shard_names)
        regions = await asyncio.to_thread(registry.node_regions)
        labelled = set(regions.values())
        if region not in labelled:
            return
        locations = await asyncio.to_thread(handback.actor_regions, self.settings.namespace,
                                            shard_names + [self.router.owner], regions)
        for name in handback.away_from_home(region, locations, labelled):
            if name == self.router.owner:  # last: checkpoint, then restart at home
                await self.checkpoint()
                log.warning("router of %s moves home", region)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
                return
            shard = self.shards[shard_names.index(name)]
            pause = await handback.move_home(name, shard, self.settings.namespace, region,
                                             shard.prepare_handoff.remote)
            log.warning("%s moved home to %s: %.2f s without answers", name, region, pause)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.router.retention_due_in_s(now_ms(), RETENTION_INTERVAL_S, RETENTION_AFTER_START_S))
            try:
                pruned = await self.prune_mailboxes()
                log.info("retention pruned %d mailbox events", pruned)
            except Exception as error:
                log.warning("retention run failed: %s", error)
            self.router.retention_ran(now_ms())
            try:
                await self.checkpoint()
            except Exception as error:
                log.warning("router checkpoint failed: %s", error)


def start_region(settings: Settings, database_url: str, region: str):
    """Get or create the region's router (which gets or creates its shards); returns its handle."""
    options = registry.actor_options(settings, registry.router_name(region), region)
    return RouterActor.options(**options).remote(settings, database_url, region)
