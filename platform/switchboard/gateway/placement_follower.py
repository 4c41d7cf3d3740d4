"""Keeping one gateway replica in step with reshards, without a restart (actors/resharding.py).

A replica learns that a region's placement moved on in two ways: a shard's placement mark on a
delivery stream (every shard puts one on each stream right after a reshard), or a `Moved` answer
(a shard that no longer owns what it was sent). Either way it asks that region's router for the
placement once (one call in flight per region), and if it is newer:

- the directory takes it (new ring, new handles, the conversation memo emptied);
- batchers of shards that left the placement are retired: what fails on them is routed again;
- the delivery hub opens streams to new shards of its own region, stops those of removed ones,
  and re-attaches every local socket whose mailbox moved at its new shard, with its cursor.

An operation answered Moved is routed again to its owner under the newest placement, keeping its
future and its deadline, so the sender gets exactly one answer: `sent` from the new owner, or
`overloaded` if the deadline passes first (nothing was committed by the shard that said Moved).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from switchboard.actors.ops import SEQUENCED, Outcome
from switchboard.errors import Moved, Overloaded

from .shards import RETRY_BACKOFF_S, placement_of

if TYPE_CHECKING:
    from .core import GatewayCore

log = logging.getLogger(__name__)

NOT_ROUTED = "the shard of this conversation changed and it could not be reached in time; retry"


class PlacementFollower:
    def __init__(self, core: GatewayCore):
        self.core = core
        self._learning: dict[str, asyncio.Task] = {}
        self._rerouting: set[asyncio.Task] = set()
        self.rerouted = 0  # operations routed again after Moved (for stats and tests)
        self.placements_applied = 0

    async def learn(self, region: str) -> None:
        """Fetch region's placement from its router and apply it if newer (one fetch at a time)."""
        task = self._learning.get(region)
        if task is None or task.done():
            task = self._learning[region] = asyncio.ensure_future(self._learn(region))
        await asyncio.shield(task)

    async def _learn(self, region: str) -> None:
        try:
            placement = await placement_of(self.core.settings, region)
        except Exception as error:  # the next Moved or mark asks again
            log.warning("could not learn the placement of %s: %s", region, error)
            return
        self.apply(placement)

    def apply(self, placement) -> None:
        core = self.core
        before = core.hub.session_indexes()
        if not core.directory.apply(placement):
            return
        self.placements_applied += 1
        log.warning("placement of %s is now epoch %d (%d shards)", placement.region, placement.epoch,
                    placement.shard_count)
        for batchers in (core.batchers, core.signal_batchers):
            for index, batcher in batchers.items():
                handle = core.directory.handles.get(index)
                batcher.retired = handle is None
                if handle is not None:
                    batcher.handle = handle
        core.hub.placement_changed(placement.region, before)

    def heard(self, region: str, epoch: int) -> None:
        """A shard's placement mark: learn the placement if it is newer than ours."""
        directory = self.core.directory
        if region in directory.placements and epoch > directory.epoch(region):
            asyncio.ensure_future(self.learn(region))

    def moved_callback(self, region: str):
        """The batchers' on_moved for shards of `region`."""
        def moved(entry, error: Moved | None) -> None:
            task = asyncio.ensure_future(self._reroute(entry, error, region))
            self._rerouting.add(task)
            task.add_done_callback(self._rerouting.discard)
        return moved

    async def _reroute(self, entry, error: Moved | None, region: str) -> None:
        operation, future, deadline = entry
        core = self.core
        if error is None or error.epoch > core.directory.epoch(region):
            await self.learn(region)
        else:  # the shard is behind us, or both are current and it is adopting: give it a moment
            await asyncio.sleep(RETRY_BACKOFF_S)
        if future.done():
            return
        if core.clock() >= deadline:
            future.set_result(Outcome.failed(Overloaded(NOT_ROUTED)))
            return
        self.rerouted += 1
        index = core.directory.index_for(operation, region)
        batcher = core.write_batcher(index) if isinstance(operation, SEQUENCED) else core.signal_batcher(index)
        batcher.requeue(operation, future, deadline)
