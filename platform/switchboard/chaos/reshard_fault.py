"""The reshard fault of the chaos run (issue #11 point 2):

  reshard   the default region grows by one shard, and the next time shrinks back to its first
            count, through its router as `switchboard scale` does (actors/resharding.py), while
            the traffic runs and between the other faults

No shard loses its state, so none counts as lost; the run reports the waits of the sends first
tried while the reshard ran (to a second after it answered): `reshard_send_p99_s`, and the longest,
`reshard_pause_s`.
"""

from __future__ import annotations

import time

import ray

from switchboard.actors import registry

from .faults import Fault, FaultContext, FaultRecord, _struck, current_shard_count

RESHARD_TIMEOUT_S = 180.0


class Reshard(Fault):
    kind = "reshard"

    def inject(self, context: FaultContext) -> FaultRecord:
        first = context.settings.shards_per_region
        count = current_shard_count(context)
        target = count + 1 if count <= first else first
        record = _struck(self.kind, shard_count=count)
        try:
            router = registry.get_actor(context.settings, registry.router_name(context.settings.region))
            result = ray.get(router.reshard.remote(target), timeout=RESHARD_TIMEOUT_S)
        except Exception as error:  # the router restarting after a router_kill, say
            record.skipped, record.detail = True, f"{count} -> {target} shards not done: {error}"
            return record
        # The end of the window whose sends send_waits measures (timings.py).
        record.restarted_wall_ms = int(time.time() * 1000)
        record.detail = (f"{count} -> {target} shards in {result['seconds']} s (hand-off {result['handoff_s']} s), "
                         f"moved {result['moved']['mailboxes']} mailboxes, "
                         f"{result['moved']['conversations']} conversations")
        return record
