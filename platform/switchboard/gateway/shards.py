"""The gateway's view of the region's shards: who owns a key, and calls that wait out a restart.
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
    def __init__(self, settings: Settings, placement: Placement):
        self.settings = settings
        self.placement = placement
        self.ring = Ring(placement.shard_count)
        self.handles = [ray.get_actor(name, namespace=placement.namespace) for name in placement.shard_names]
        self._conversation_shards: dict[str, int] = {}

    @classmethod
    async def from_router(cls, settings: Settings) -> ShardDirectory:
        """Ask the region's router for the placement, waiting out a restart of the router (a
        replica starting meanwhile would otherwise fail, and Serve would start another)."""
        router = registry.get_actor(settings, registry.router_name(settings.region))
        placement = await call_while_restarting(router.placement.remote, ROUTER_WAIT_S)
        return cls(settings, placement)

    def for_user(self, user_id: str) -> tuple[int, object]:
        index = self.ring.user_shard(user_id)
        return index, self.handles[index]

    def for_conversation(self, conversation_id: str) -> tuple[int, object]:
        # Every send looks its conversation up; hashing onto the ring each time was ~6% of a
        # gateway's CPU under load. The placement never changes for this directory's life.
        index = self._conversation_shards.get(conversation_id)
        if index is None:
            if len(self._conversation_shards) >= PLACEMENT_CACHE_MAX:
                self._conversation_shards.clear()
            index = self._conversation_shards[conversation_id] = self.ring.conversation_shard(conversation_id)
        return index, self.handles[index]
