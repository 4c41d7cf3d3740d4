"""Hand back: when a region's nodes return after its actors were taken over by its mirror's nodes,
its router moves them home by a planned handoff, never by waiting for a crash.

Each actor away from home, shards first and one at a time (so the region is never short of more
than one), then the router itself:
  1. drain: the shard's queued operations are committed and answered (bounded by the send timeout);
  2. checkpoint: the state is written to PostgreSQL, so the restart at home replays next to nothing;
  3. stop: Ray kills the process and restarts it; its label_selector prefers the home region's
     nodes over the mirror's fallback (measured: the restarted actor lands at home);
  4. start at home: it restores from the checkpoint; gateways, whose calls failed meanwhile, retry
     them there (every operation is idempotent) and re-attach their sockets (as after any restart).
The fence in PostgreSQL (the sequencer's `last_seq` check) still holds whatever the timing: a
stopped process that had a commit in flight cannot make a second sequencer's commit pass.

The plan is a plain function; the loop runs in the router (actors/remote.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import ray

from . import registry

log = logging.getLogger(__name__)

# How often a router looks whether its region's nodes are back (and its actors away).
CHECK_INTERVAL_S = 2.0
# How long a moved shard may take to answer healthy at home before the next one moves.
HOME_WAIT_S = 60.0


def away_from_home(home: str, locations: dict[str, str | None], labelled: set[str]) -> list[str]:
    """The actors (by name) to move home, in order: shards, then the router. Nothing unless the
    home region has live nodes; an actor whose node is unknown (restarting) waits for a later look."""
    if home not in labelled:
        return []
    away = [name for name, region in locations.items() if region is not None and region != home]
    return sorted(away, key=lambda name: (name.startswith("router:"), name))


def actor_regions(namespace: str, names: list[str], regions: dict[str, str] | None = None) -> dict[str, str | None]:
    """Each named actor's node region (None: not alive now, or on a node with no region);
    `regions` is registry.node_regions(), if the caller already has it."""
    regions = registry.node_regions() if regions is None else regions
    return {name: regions.get(node) for name, node in registry.actor_nodes(namespace, names).items()}


@ray.remote(num_cpus=0)
def _warm_up() -> int:
    return 0


async def warm_worker(home: str) -> None:
    """Have a worker process ready on a home node before the stop: a task leaves its worker idle
    in the node's pool, and the restarted actor can take it instead of starting a process (most
    of a move's pause on a busy machine). Best effort."""
    try:
        await asyncio.wait_for(_warm_up.options(label_selector={registry.REGION_LABEL: home}).remote(), 10.0)
    except Exception as error:
        log.info("no worker warmed up in %s: %s", home, error)


async def move_home(name: str, handle, namespace: str, home: str, prepare: Callable[[], Awaitable[object]]) -> float:
    """Drain and checkpoint (prepare), stop; wait until it answers from a home node. Returns the
    seconds from the stop to its first healthy answer at home (the pause its callers saw)."""
    await warm_worker(home)
    await prepare()
    stopped = time.monotonic()
    ray.kill(handle, no_restart=False)
    deadline = stopped + HOME_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if (await asyncio.to_thread(actor_regions, namespace, [name])).get(name) != home:
            continue
        try:
            answer = await asyncio.wait_for(handle.health.remote(), 2.0)
        except Exception:
            continue
        if answer.get("ok"):
            return time.monotonic() - stopped
    raise TimeoutError(f"{name} did not come back home to {home} within {HOME_WAIT_S} s")
