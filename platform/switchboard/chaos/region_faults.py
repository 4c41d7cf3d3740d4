"""The region faults of the chaos run (issue #10 point 6):

  region_loss    every worker node of the default region (where the faults strike) removed at once; its
                 router and shards restart on the mirror region's nodes (a takeover)
  region_return  a worker node of the region lost last joins again; its router moves the region's
                 actors home by a planned handoff (actors/handback.py)

Both count their shards as lost, so the run measures, at the clients, the time to the first send
committed and the first delivery by the restarted shards (the takeover; the hand back), and the
longest any send waited while a hand back ran (timings.send_pauses).
"""

from __future__ import annotations

from switchboard.actors import registry

from .faults import Fault, FaultContext, FaultRecord, _started_at, _struck, current_shard_count


def _shards_where(context: FaultContext, wanted) -> list[int]:
    """The default region's shards whose node's region satisfies wanted(region or None)."""
    regions = {worker.node_id: worker.region for worker in context.cluster.workers}
    settings = context.settings
    return [index for index in range(current_shard_count(context))
            if wanted(regions.get(context.cluster.actor_node(registry.shard_name(settings.region, index))))]


class RegionLoss(Fault):
    kind = "region_loss"

    def inject(self, context: FaultContext) -> FaultRecord:
        region = context.settings.region
        lost = [worker for worker in context.cluster.workers if worker.region == region]
        if not lost or context.settings.mirror_of(region) is None:
            return _struck(self.kind, detail=f"{region}: no worker node, or no mirror region", skipped=True)
        shards = _shards_where(context, lambda at: at == region)  # the ones the loss takes
        record = _struck(self.kind, detail=f"{region}: {len(lost)} node(s) -> {context.settings.mirror_of(region)}",
                         killed_shards=frozenset(shards), incarnations=_started_at(context, shards))
        for worker in lost:
            context.cluster.remove_worker(worker)
        context.lost_regions.append(region)
        return record


class RegionReturn(Fault):
    kind = "region_return"

    def inject(self, context: FaultContext) -> FaultRecord:
        if not context.lost_regions:
            return _struck(self.kind, detail="no region is lost", skipped=True)
        region = context.lost_regions.pop()
        shards = _shards_where(context, lambda at: at != region)  # the ones the hand back moves
        record = _struck(self.kind, detail=f"{region} returns", killed_shards=frozenset(shards),
                         incarnations=_started_at(context, shards))
        context.cluster.add_worker(region)
        return record
