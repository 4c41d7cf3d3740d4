"""The region router: the authority on which shards serve a region and how keys map onto them.

Gateways ask it once for the placement and then talk to shards directly, batch by batch: a router
on the data path would add one actor hop per batch for no decision it could make better than the
ring. It also runs the region's housekeeping (mailbox retention).

The placement itself (the shard count and its epoch) is stored in PostgreSQL
(storage/placements.py), which a restarted router reads. Its checkpoint (actors/checkpoint.py)
keeps when retention last ran, so a restart neither runs it again at once nor postpones it by a
whole interval, and the placement it last handed out, for operators.
"""

from __future__ import annotations

import dataclasses
import logging

from .checkpoint import RouterCheckpoint
from .placement import Placement

__all__ = ["Placement", "RegionRouter"]

log = logging.getLogger(__name__)

MS_PER_S = 1000


class RegionRouter:
    def __init__(self, region: str, namespace: str, shard_names: list[str], owner: str, now_ms: int, epoch: int = 1):
        self.owner = owner
        self.placement = Placement(region=region, namespace=namespace, shard_names=tuple(shard_names), epoch=epoch)
        # A region never seen before waits one interval for its first retention run.
        self.retention_last_run = now_ms

    def restore(self, checkpoint: RouterCheckpoint) -> None:
        """Continue retention's schedule from a checkpoint (the placement comes from PostgreSQL)."""
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
