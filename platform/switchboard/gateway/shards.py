"""The gateway's view of the region's shards: who owns a key, and batched calls to the owner.

Ray actor calls cost per call, not per byte (DESIGN.md: ~1.5-2k calls/s from one caller whatever
the batch), so every operation bound for one shard waits for the call in flight to that shard and
leaves with everything that queued meanwhile: one call per batch, one call in flight per shard.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from switchboard.actors import registry
from switchboard.actors.ops import Operation, Outcome
from switchboard.actors.ring import Ring
from switchboard.actors.router import Placement
from switchboard.errors import Overloaded, SwitchboardError
from switchboard.settings import Settings

log = logging.getLogger(__name__)

BATCH_MAX = 512
# One: the shard commits one batch at a time anyway, so a second call in flight would only wait in
# its queue; holding the operations here instead sends them as one larger batch (measured: W1 p99
# 78 ms with one in flight against 84-239 ms with two, W2 throughput the same).
IN_FLIGHT_PER_SHARD = 1
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


class ShardBatcher:
    """Queues operations for one shard and submits them in batches, retrying while it restarts."""

    def __init__(self, handle, deadline_s: float):
        self.handle = handle
        self.deadline_s = deadline_s
        self._queue: collections.deque[tuple[Operation, asyncio.Future, float]] = collections.deque()
        self._in_flight = 0
        self.calls = 0

    def enqueue(self, operation: Operation) -> asyncio.Future:
        """Queue the operation; the future resolves with its Outcome (never with an exception)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future, time.monotonic() + self.deadline_s))
        self._pump()
        return future

    def _pump(self) -> None:
        while self._queue and self._in_flight < IN_FLIGHT_PER_SHARD:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MAX))]
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch) -> None:
        try:
            self.calls += 1
            outcomes = await self.handle.submit.remote([operation for operation, _, _ in batch])
            for (_, future, _), outcome in zip(batch, outcomes):
                _settle(future, outcome)
        except SHARD_GONE as error:
            log.warning("shard unavailable (%s); retrying %d operations", type(error).__name__, len(batch))
            await asyncio.sleep(RETRY_BACKOFF_S)
            now = time.monotonic()
            retry = [item for item in batch if item[2] > now]
            for _, future, _ in (item for item in batch if item[2] <= now):
                _settle(future, Outcome.failed(Overloaded("the conversation's shard is restarting; retry")))
            self._queue.extendleft(reversed(retry))
        except Exception as error:  # a bug on the shard: answer every operation, keep serving
            cause = unwrap(error)
            log.exception("shard call failed")
            failure = cause if isinstance(cause, SwitchboardError) else SwitchboardError("internal error")
            for _, future, _ in batch:
                _settle(future, Outcome.failed(failure))
        finally:
            self._in_flight -= 1
            self._pump()


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
