"""The Ray edge: the plain classes of this package made into named, detached, restartable actors.

This is the only module that applies ray.remote. Each actor builds its own database engine from
the settings it is handed (actors never read the environment), and rebuilds its state from
PostgreSQL lazily after a start or restart: conversations on first use, mailboxes when a socket
attaches.
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray

from switchboard.settings import Settings
from switchboard.storage.database import make_engine
from switchboard.storage.sql_store import SqlStore
from switchboard.tuning import tune_interpreter

from . import registry
from .ring import Ring
from .router import Placement, RegionRouter
from .shard import MailboxShard, PeerLink

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600


class RayPeers(PeerLink):
    """Fire-and-forget deliveries to peer shards. A lost one (peer restarting) is not lost data:
    the events are committed, and the peer's gateways re-attach with their cursors."""

    def __init__(self, settings: Settings, region: str):
        self.settings = settings
        self.region = region
        self._handles: dict[int, object] = {}

    def _peer(self, index: int):
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = registry.get_actor(self.settings, registry.shard_name(self.region, index))
        return handle

    def deliver(self, shard_index, events):
        try:
            self._peer(shard_index).deliver.remote(events)
        except Exception as error:
            log.warning("delivery to shard %d failed: %s", shard_index, error)

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        try:
            self._peer(shard_index).deliver_ephemeral.remote(user_ids, frame)
        except Exception as error:
            log.warning("ephemeral delivery to shard %d failed: %s", shard_index, error)


@ray.remote
class ShardActor:
    def __init__(self, settings: Settings, database_url: str, region: str, index: int):
        tune_interpreter()
        self.shard = MailboxShard(
            index=index,
            ring=Ring(settings.shards_per_region),
            store=SqlStore(make_engine(database_url, pool_size=4)),
            peers=RayPeers(settings, region),
            max_members=settings.max_members,
            commit_batch_max=settings.commit_batch_max,
            queue_max=settings.shard_queue_max,
        )
        self.started_at = time.time()

    async def submit(self, operations):
        return await self.shard.submit(operations)

    async def typing(self, conversation_id, user_id):
        return await self.shard.typing(conversation_id, user_id)

    async def attach(self, gateway_id, user_id, since):
        return await self.shard.attach(gateway_id, user_id, since)

    async def heartbeat(self, gateway_id):
        self.shard.heartbeat(gateway_id)

    async def detach(self, gateway_id, user_id):
        self.shard.detach(gateway_id, user_id)

    async def ack(self, user_id, cursor):
        self.shard.ack(user_id, cursor)

    async def deliver(self, events):
        self.shard.deliver(events)

    async def deliver_ephemeral(self, user_ids, frame):
        self.shard.deliver_ephemeral(user_ids, frame)

    async def stream(self, gateway_id):
        async for batch in self.shard.stream(gateway_id):
            yield batch

    async def stats(self):
        return {**self.shard.stats(), "started_at": self.started_at}


@ray.remote
class RouterActor:
    """One per region: creates (or finds) the region's shards and hands out the placement."""

    def __init__(self, settings: Settings, database_url: str, region: str):
        self.settings = settings
        self.database_url = database_url
        names = [registry.shard_name(region, i) for i in range(settings.shards_per_region)]
        self.router = RegionRouter(region, settings.namespace, names)
        self.shards = [
            ShardActor.options(**registry.actor_options(settings, name, region)).remote(
                settings, database_url, region, index
            )
            for index, name in enumerate(names)
        ]
        self._store = None
        self._housekeeping = None

    async def placement(self) -> Placement:
        self._start_housekeeping()
        return self.router.placement

    async def ready(self) -> bool:
        """True once every shard of the region answers."""
        await asyncio.gather(*(shard.stats.remote() for shard in self.shards))
        return True

    async def stats(self) -> list[dict]:
        return list(await asyncio.gather(*(shard.stats.remote() for shard in self.shards)))

    async def prune_mailboxes(self) -> int:
        from switchboard.protocol import now_ms

        if self._store is None:
            self._store = SqlStore(make_engine(self.database_url, pool_size=1))
        return await asyncio.to_thread(
            self._store.prune_mailboxes, self.settings.retention_days, self.settings.retention_events, now_ms()
        )

    def _start_housekeeping(self) -> None:
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self._retention_loop())

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_INTERVAL_S)
            try:
                pruned = await self.prune_mailboxes()
                log.info("retention pruned %d mailbox events", pruned)
            except Exception as error:
                log.warning("retention run failed: %s", error)


def start_region(settings: Settings, database_url: str, region: str):
    """Get or create the region's router (which gets or creates its shards); returns its handle."""
    options = registry.actor_options(settings, registry.router_name(region), region)
    return RouterActor.options(**options).remote(settings, database_url, region)
