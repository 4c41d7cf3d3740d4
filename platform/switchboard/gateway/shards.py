"""The gateway's view of every region's shards: who owns a key, and calls that wait out a restart.
Batched calls to a shard are batcher.py's."""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from switchboard.actors import registry
from switchboard.actors.ring import Ring
from switchboard.actors.router import Placement
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
    """Every region's shards as one flat list (region by region, in the settings' order), so
    batchers and delivery pumps are indexed alike whatever the region. A user's mailbox is on its
    home region's ring; a conversation's sequencer on the ring of the region its id names."""

    def __init__(self, settings: Settings, placements: list[Placement], home_region: str | None = None,
                 get_handle=None):
        """get_handle(name, namespace) -> an actor handle (Ray's named actors unless given)."""
        get_handle = get_handle or (lambda name, namespace: ray.get_actor(name, namespace=namespace))
        self.settings = settings
        self.home_region = home_region or settings.region  # the region this replica serves from
        self.placements = {placement.region: placement for placement in placements}
        self.rings = {placement.region: Ring(placement.shard_count) for placement in placements}
        self.offsets: dict[str, int] = {}
        self.handles: list = []
        self.regions: list[str] = []  # the region of each flat index
        for placement in placements:
            self.offsets[placement.region] = len(self.handles)
            self.handles += [get_handle(name, placement.namespace) for name in placement.shard_names]
            self.regions += [placement.region] * placement.shard_count
        self._conversation_shards: dict[str, int] = {}

    @classmethod
    async def from_routers(cls, settings: Settings, home_region: str | None = None) -> ShardDirectory:
        """Ask every region's router for its placement, waiting out a restart of a router (a
        replica starting meanwhile would otherwise fail, and Serve would start another)."""
        async def placement_of(region: str) -> Placement:
            router = registry.get_actor(settings, registry.router_name(region))
            return await call_while_restarting(router.placement.remote, ROUTER_WAIT_S)
        placements = await asyncio.gather(*(placement_of(region) for region in settings.regions))
        return cls(settings, list(placements), home_region)

    def home_indexes(self) -> range:
        """The flat indexes of this replica's own region's shards."""
        start = self.offsets[self.home_region]
        return range(start, start + self.placements[self.home_region].shard_count)

    def is_abroad(self, index: int) -> bool:
        return self.regions[index] != self.home_region

    def user_index(self, user_id: str, region: str) -> int:
        """The flat index of the shard hosting user_id's mailbox in its home region (the default
        region's for a region this platform does not run)."""
        if region not in self.offsets:
            region = self.settings.region
        return self.offsets[region] + self.rings[region].user_shard(user_id)

    def for_user(self, user_id: str, region: str) -> tuple[int, object]:
        index = self.user_index(user_id, region)
        return index, self.handles[index]

    def for_conversation(self, conversation_id: str) -> tuple[int, object]:
        # Every send looks its conversation up; hashing onto the ring each time was ~6% of a
        # gateway's CPU under load. The placement never changes for this directory's life.
        index = self._conversation_shards.get(conversation_id)
        if index is None:
            if len(self._conversation_shards) >= PLACEMENT_CACHE_MAX:
                self._conversation_shards.clear()
            region = conversation_region(conversation_id, self.offsets, self.settings.region)
            index = self.offsets[region] + self.rings[region].conversation_shard(conversation_id)
            self._conversation_shards[conversation_id] = index
        return index, self.handles[index]
