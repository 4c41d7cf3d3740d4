"""How a shard reaches the other shards: of its own region by index, of another region by that
region's ring, learned once from the region's router. Fire-and-forget: a lost delivery (the peer
restarting) is not lost data, the events are committed and the peer's gateways re-attach with
their cursors. Calls to another region's actors are counted by kind (`cross_region_calls`)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from ray.exceptions import ActorUnavailableError, RayActorError

from switchboard.settings import Settings

from . import registry
from .ring import Ring
from .shard import PeerLink, group_by

log = logging.getLogger(__name__)

# How long a shard waits for another region's router (restarting, or taking over on its mirror)
# before it gives up on the deliveries waiting for that region's ring: they were committed, and
# reach their sockets by replay.
PLACEMENT_WAIT_S = 10.0
PLACEMENT_RETRY_S = 0.2
# Hand-offs that may wait for one region's ring to be learned; beyond, they are dropped (as above).
WAITING_MAX = 1000


class RayPeers(PeerLink):
    def __init__(self, settings: Settings, region: str):
        self.settings = settings
        self.region = region
        self._handles: dict[tuple[str, int], object] = {}
        self._rings: dict[str, tuple[Ring, tuple[str, ...]]] = {}
        self._waiting: dict[str, list[Callable]] = {}
        self.cross_region_calls: collections.Counter = collections.Counter()

    # ---- this region --------------------------------------------------------------------------

    def deliver(self, shard_index, events):
        self._call(self.region, shard_index, registry.shard_name(self.region, shard_index), "deliver", events)

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        self._call(self.region, shard_index, registry.shard_name(self.region, shard_index),
                   "deliver_ephemeral", user_ids, frame)

    def forward(self, shard_index, events):
        self._call(self.region, shard_index, registry.shard_name(self.region, shard_index), "deliver", events, True)

    def forward_ephemeral(self, shard_index, user_ids, frame):
        self._call(self.region, shard_index, registry.shard_name(self.region, shard_index),
                   "deliver_ephemeral", user_ids, frame, True)

    # ---- another region -----------------------------------------------------------------------

    def forget_handles(self) -> None:
        """This region resharded: a removed index may come back as another actor of the same name."""
        for key in [key for key in self._handles if key[0] == self.region]:
            del self._handles[key]

    def forget_ring(self, region: str) -> None:
        """That region resharded: ask its router again next time (a delivery sent on the old ring
        meanwhile is forwarded by the shard it reaches)."""
        self._rings.pop(region, None)

    def deliver_abroad(self, region, events):
        def send(ring: Ring, names: tuple[str, ...]) -> None:
            for index, shard_events in group_by(events, lambda event: ring.user_shard(event.user_id)).items():
                self._call(region, index, names[index], "deliver", shard_events)
        self._with_ring(region, send)

    def deliver_ephemeral_abroad(self, region, user_ids, frame):
        def send(ring: Ring, names: tuple[str, ...]) -> None:
            for index, users in group_by(user_ids, ring.user_shard).items():
                self._call(region, index, names[index], "deliver_ephemeral", users, frame)
        self._with_ring(region, send)

    def _with_ring(self, region: str, send: Callable) -> None:
        known = self._rings.get(region)
        if known is not None:
            send(*known)
            return
        waiting = self._waiting.get(region)
        if waiting is None:
            waiting = self._waiting[region] = []
            asyncio.ensure_future(self._learn_ring(region))
        if len(waiting) < WAITING_MAX:
            waiting.append(send)

    async def _learn_ring(self, region: str) -> None:
        """Ask the region's router for its placement once (waiting out a restart of it)."""
        deadline = time.monotonic() + PLACEMENT_WAIT_S
        try:
            while True:
                try:
                    router = registry.get_actor(self.settings, registry.router_name(region))
                    self.cross_region_calls["placement"] += 1
                    placement = await router.placement.remote()
                    break
                except (ValueError, RayActorError, ActorUnavailableError) as error:
                    if time.monotonic() > deadline:
                        log.warning("region %s's router did not answer (%s): deliveries there dropped", region, error)
                        return
                    await asyncio.sleep(PLACEMENT_RETRY_S)
            self._rings[region] = (Ring(placement.shard_count), placement.shard_names)
            # Handles by index: a reshard may have given an index another actor.
            for key in [key for key in self._handles if key[0] == region]:
                del self._handles[key]
        finally:
            waiting = self._waiting.pop(region, [])
            if region in self._rings:
                for send in waiting:
                    send(*self._rings[region])

    # ---- the calls ----------------------------------------------------------------------------

    def _call(self, region: str, index: int, name: str, method: str, *args) -> None:
        try:
            handle = self._handles.get((region, index))
            if handle is None:
                handle = self._handles[(region, index)] = registry.get_actor(self.settings, name)
            getattr(handle, method).remote(*args)
            if region != self.region:
                self.cross_region_calls[method] += 1
        except Exception as error:
            log.warning("%s to %s failed: %s", method, name, error)
