"""Changing a region's shard count on a running platform: the router's steps, in order.

1. Shards being added start owning nothing (created under the old count, their index is on no
   ring point) and restore; the router waits until each answers.
2. The database moves the region's placement to the next epoch and fences every shard with it
   (storage/placements.py): the update waits for each shard's commit in flight, and from then on a
   commit planned under the old placement is refused. This is the moment ownership changes.
3. Every shard, old and new, adopts the new placement: it lets go of the conversations and
   mailboxes another shard owns now. An operation that reaches a shard not owning its key is
   answered Moved (nothing committed), and the gateway re-routes it within its deadline.
4. The router hands out the new placement, and every shard puts a placement mark on each of its
   gateway streams: each replica fetches the placement, re-routes, and re-attaches the sockets of
   moved mailboxes at their new shard with their cursors (a replay from PostgreSQL covers anything
   committed meanwhile; deliveries sent to an old owner are forwarded once).
5. Other regions' shards forget this region's ring and learn it again on their next delivery here.
6. Shards being removed (they own nothing now) get a grace period for gateways to move off them,
   then are stopped for good.

Plain asyncio over handles: remote.py's router supplies Ray actor handles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from switchboard.settings_checks import RANGES

log = logging.getLogger(__name__)

# Shards per region a reshard may ask for, the same bound as the setting's: it sizes the flat
# index space of the gateways (gateway/shards.py) and bounds what one command can start.
MAX_SHARDS_PER_REGION = int(RANGES["shards_per_region"].high)
# How long a removed shard keeps answering Moved (and forwarding deliveries) after the new
# placement is announced, before it is stopped.
REMOVED_SHARD_GRACE_S = 3.0
# A shard being added must answer within this long, or the reshard stops before anything moved.
ADDED_SHARD_WAIT_S = 60.0


@dataclasses.dataclass
class ReshardSteps:
    """What a reshard needs from the router, each an awaitable call."""

    create_shards: Callable[[list[int]], dict[int, object]]  # index -> handle of a new shard
    advance: Callable[[int, int], Awaitable[int]]  # (new count, old count) -> the new epoch
    publish: Callable[[int, int], None]  # (new count, epoch): the router's placement from now on
    tell_other_regions: Callable[[], None]
    retire: Callable[[int, object], Awaitable[None]]  # stop a removed shard for good


async def reshard(region: str, shards: dict[int, object], new_count: int, steps: ReshardSteps,
                  grace_s: float = REMOVED_SHARD_GRACE_S) -> dict:
    """Move region from len(shards) shards to new_count; returns figures (and the shards that
    serve from now on, under "shards")."""
    old_count = len(shards)
    if not 1 <= new_count <= MAX_SHARDS_PER_REGION:
        raise ValueError(f"a region runs 1 to {MAX_SHARDS_PER_REGION} shards, not {new_count}")
    if new_count == old_count:
        return {"changed": False, "shard_count": old_count, "shards": shards}
    started = time.monotonic()
    added = steps.create_shards(list(range(old_count, new_count)))
    await asyncio.wait_for(asyncio.gather(*(handle.stats.remote() for handle in added.values())), ADDED_SHARD_WAIT_S)
    everyone = {**shards, **added}
    epoch = await steps.advance(new_count, old_count)
    fenced = time.monotonic()
    adopted = await asyncio.gather(*(handle.adopt.remote(new_count, epoch) for handle in everyone.values()),
                                   return_exceptions=True)
    steps.publish(new_count, epoch)
    for handle in everyone.values():
        handle.announce_placement.remote()
    steps.tell_other_regions()
    moved = {"conversations": 0, "mailboxes": 0}
    for index, answer in zip(everyone, adopted):
        if isinstance(answer, BaseException):  # restarting: it reads the placement as it restores
            log.warning("shard %d of %s did not adopt epoch %d now: %s", index, region, epoch, answer)
            continue
        moved["conversations"] += answer.get("conversations_moved", 0)
        moved["mailboxes"] += answer.get("mailboxes_moved", 0)
    announced = time.monotonic()
    removed = {index: handle for index, handle in everyone.items() if index >= new_count}
    if removed:
        await asyncio.sleep(grace_s)
        await asyncio.gather(*(steps.retire(index, handle) for index, handle in removed.items()))
    log.warning("%s resharded %d -> %d shards (epoch %d): moved %s", region, old_count, new_count, epoch, moved)
    return {"changed": True, "region": region, "from": old_count, "to": new_count, "epoch": epoch,
            "moved": moved, "prepare_s": round(fenced - started, 3), "handoff_s": round(announced - fenced, 3),
            "seconds": round(time.monotonic() - started, 3),
            "shards": {index: handle for index, handle in everyone.items() if index < new_count}}
