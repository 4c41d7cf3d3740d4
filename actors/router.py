"""The region router: the authority on which shards serve a region and how keys map onto them.

Gateways ask it once for the placement and then talk to shards directly, batch by batch: a router
on the data path would add one actor hop per batch for no decision it could make better than the
ring. It also runs the region's housekeeping (mailbox retention).

Its state is small and checkpointed (actors/checkpoint.py): the placement with its epoch, so a
restarted router hands out the same one, and when retention last ran, so a restart neither runs
it again at once nor postpones it by a whole interval.
"""

from __future__ import annotations

import dataclasses
import logging

from .checkpoint import RouterCheckpoint

log = logging.getLogger(__name__)

MS_PER_S = 1000


@dataclasses.dataclass(frozen=True)
class Placement:
    region: str
    namespace: str
    shard_names: tuple[str, ...]
    # Moves when the region's shard set changes across restarts (a new shard count moves keys).
    epoch: int = 1

    @property
    def shard_count(self) -> int:
        return len(self.shard_names)


class RegionRouter:
    def __init__(self, region: str, namespace: str, shard_names: list[str], owner: str, now_ms: int):
        self.owner = owner
        self.placement = Placement(region=region, namespace=namespace, shard_names=tuple(shard_names))
        # A region never seen before waits one interval for its first retention run.
        self.retention_last_run = now_ms

    def restore(self, checkpoint: RouterCheckpoint) -> None:
        """Continue from a checkpoint: the same epoch for the same placement (a new one if the
        configured shards changed meanwhile), and retention's schedule."""
        same = (checkpoint.region, checkpoint.namespace, checkpoint.shard_names) == (
            self.placement.region, self.placement.namespace, self.placement.shard_names)
        epoch = checkpoint.epoch if same else checkpoint.epoch + 1
        if not same:
            log.warning("placement of %s changed since its checkpoint (%d -> %d shards): epoch %d",
                        self.placement.region, len(checkpoint.shard_names), self.placement.shard_count, epoch)
        self.placement = dataclasses.replace(self.placement, epoch=epoch)
        self.retention_last_run = checkpoint.retention_last_run

    def snapshot(self, now_ms: int) -> RouterCheckpoint:
        return RouterCheckpoint(
            owner=self.owner, taken_at=now_ms, region=self.placement.region, namespace=self.placement.namespace,
            shard_names=self.placement.shard_names, epoch=self.placement.epoch,
            retention_last_run=self.retention_last_run,
        )

    def retention_due_in_s(self, now_ms: int, interval_s: float, at_least_s: float) -> float:
        """Seconds until retention should run: an interval after its last run, but never sooner
        than at_least_s (a router restarting in a loop must not prune on every start)."""
        due = self.retention_last_run + interval_s * MS_PER_S
        return max(at_least_s, (due - now_ms) / MS_PER_S)

    def retention_ran(self, now_ms: int) -> None:
        self.retention_last_run = now_ms
