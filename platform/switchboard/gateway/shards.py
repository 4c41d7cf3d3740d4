"""The gateway's view of every region's shards: who owns a key, and calls that wait out a restart.
Batched calls to a shard are batcher.py's."""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from switchboard.actors import registry
from switchboard.actors.placement import Placement
from switchboard.actors.resharding import MAX_SHARDS_PER_REGION
from switchboard.actors.ring import Ring
from switchboard.errors import SwitchboardError
from switchboard.protocol import conversation_region
from switchboard.settings import Settings

log = logging.getLogger(__name__)

# A call to a restarting actor fails at once (local.ray_environment), so this pause is most of what
# a retry adds to a restart; a failed call costs next to nothing.
RETRY_BACKOFF_S = 0.05
# How long a starting replica waits for a restarting router.
ROUTER_WAIT_S = 30.0
# Conversations whose shard index is remembered; past this the memo starts over (a rehash each).
PLACEMENT_CACHE_MAX = 100_000
# Flat indexes per region: no region runs more shards than a reshard may ask for.
SHARD_INDEX_STRIDE = MAX_SHARDS_PER_REGION

# A shard that died or is restarting: worth retrying the call, since every operation is
# idempotent (sends by client_msg_id, creates by the gateway-chosen conversation id).
SHARD_GONE = (RayActorError, ActorUnavailableError)


async def call_while_restarting(make_call, wait_s: float):
    """Await make_call(), made again every RETRY_BACKOFF_S while the actor is gone (restarting),
    for up to wait_s; after that the actor's error is raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await make_call()
        except SHARD_GONE:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_BACKOFF_S)


def unwrap(error: BaseException) -> BaseException:
    """The domain error inside a RayTaskError, if it carries one."""
    if isinstance(error, RayTaskError) and isinstance(getattr(error, "cause", None), SwitchboardError):
        return error.cause
    return error


class ShardDirectory:
    """Every region's shards under one flat index: region position x SHARD_INDEX_STRIDE + shard
    index, so batchers and delivery pumps are indexed alike whatever the region, and a reshard
    (a region's shard count changing) moves no other region's indexes. A user's mailbox is on its
    home region's ring; a conversation's sequencer on the ring of the region its id names."""

    def __init__(self, settings: Settings, placements: list[Placement], home_region: str | None = None,
                 get_handle=None):
        """get_handle(name, namespace) -> an actor handle (Ray's named actors unless given)."""
        self._get_handle = get_handle or (lambda name, namespace: ray.get_actor(name, namespace=namespace))
        self.settings = settings
        self.home_region = home_region or settings.region  # the region this replica serves from
        self.region_order = [placement.region for placement in placements]
        self.offsets = {region: position * SHARD_INDEX_STRIDE for position, region in enumerate(self.region_order)}
        self.placements: dict[str, Placement] = {}
        self.rings: dict[str, Ring] = {}
        self.handles: dict[int, object] = {}  # flat index -> handle, for the current placements' shards
        self._conversation_shards: dict[str, int] = {}
        for placement in placements:
            self._set(placement)

    def _set(self, placement: Placement) -> None:
        region, offset = placement.region, self.offsets[placement.region]
        for index in [index for index in self.handles if self.region_of(index) == region]:
            del self.handles[index]
        for index, name in enumerate(placement.shard_names):
            self.handles[offset + index] = self._get_handle(name, placement.namespace)
        self.placements[region] = placement
        self.rings[region] = Ring(placement.shard_count)
        self._conversation_shards.clear()

    def apply(self, placement: Placement) -> bool:
        """Take a region's newer placement (a reshard); False if it is not newer than the one held."""
        if placement.region not in self.offsets or placement.epoch <= self.placements[placement.region].epoch:
            return False
        self._set(placement)
        return True

    def epoch(self, region: str) -> int:
        return self.placements[region].epoch

    @classmethod
    async def from_routers(cls, settings: Settings, home_region: str | None = None) -> ShardDirectory:
        """Ask every region's router for its placement, waiting out a restart of a router (a
        replica starting meanwhile would otherwise fail, and Serve would start another)."""
        placements = await asyncio.gather(*(placement_of(settings, region) for region in settings.regions))
        return cls(settings, list(placements), home_region)

    def region_of(self, index: int) -> str:
        return self.region_order[index // SHARD_INDEX_STRIDE]

    def indexes_of(self, region: str) -> range:
        start = self.offsets[region]
        return range(start, start + self.placements[region].shard_count)

    def home_indexes(self) -> range:
        """The flat indexes of this replica's own region's shards."""
        return self.indexes_of(self.home_region)

    def is_abroad(self, index: int) -> bool:
        return self.region_of(index) != self.home_region

    def user_index(self, user_id: str, region: str) -> int:
        """The flat index of the shard hosting user_id's mailbox in its home region (the default
        region's for a region this platform does not run)."""
        if region not in self.offsets:
            region = self.settings.region
        return self.offsets[region] + self.rings[region].user_shard(user_id)

    def for_user(self, user_id: str, region: str) -> tuple[int, object]:
        index = self.user_index(user_id, region)
        return index, self.handles[index]

    def conversation_index(self, conversation_id: str) -> int:
        # Every send looks its conversation up; hashing onto the ring each time was ~6% of a
        # gateway's CPU under load. The memo starts over when a placement changes.
        index = self._conversation_shards.get(conversation_id)
        if index is None:
            if len(self._conversation_shards) >= PLACEMENT_CACHE_MAX:
                self._conversation_shards.clear()
            region = conversation_region(conversation_id, self.offsets, self.settings.region)
            index = self.offsets[region] + self.rings[region].conversation_shard(conversation_id)
            self._conversation_shards[conversation_id] = index
        return index

    def for_conversation(self, conversation_id: str) -> tuple[int, object]:
        index = self.conversation_index(conversation_id)
        return index, self.handles[index]

    def index_for(self, operation, region: str) -> int:
        """Where an operation goes now: its conversation's sequencer, or (a token lease, an ack:
        no conversation) the mailbox shard of its user in `region`."""
        conversation_id = getattr(operation, "conversation_id", None)
        if conversation_id is not None:
            return self.conversation_index(conversation_id)
        return self.user_index(operation.user_id, region)


async def placement_of(settings: Settings, region: str) -> Placement:
    """A region's placement from its router, waiting out a restart of the router."""
    router = registry.get_actor(settings, registry.router_name(region))
    return await call_while_restarting(router.placement.remote, ROUTER_WAIT_S)
