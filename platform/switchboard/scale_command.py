"""`switchboard scale --region R --shards N`: change a region's shard count while it serves.

The region's router does the work (actors/resharding.py); this command asks it, waits for the
answer and prints what moved: the mailboxes and conversations the shards let go of, and the share
of all keys the ring moves from N to M shards next to the least any scheme could move.
"""

from __future__ import annotations

import argparse
import json
import sys

from switchboard.settings import Settings
from switchboard.state_file import read_state, settings_from_state

# Adding shards waits for them to start (~2-5 s each on a small machine); removing them waits for
# the grace period (actors/resharding.py); both wait for the commits in flight.
RESHARD_TIMEOUT_S = 180
# Sampled keys for the ring's moved fraction (the real mailboxes moved are counted by the shards).
SAMPLE_KEYS = 100_000


def reshard(settings: Settings, region: str, shard_count: int) -> dict:
    """Ask region's router to move to shard_count shards (Ray must be connected); returns its figures."""
    import ray

    from switchboard.actors import registry

    if region not in settings.regions:
        raise ValueError(f"no region {region!r} here; the regions are {', '.join(settings.regions)}")
    router = registry.get_actor(settings, registry.router_name(region))
    return ray.get(router.reshard.remote(shard_count), timeout=RESHARD_TIMEOUT_S)


def ring_figures(old_count: int, new_count: int) -> dict:
    from switchboard.actors.placement import ideal_moved_fraction, moved_fraction

    keys = (f"user-{i}" for i in range(SAMPLE_KEYS))
    return {"ring_moved_fraction": round(moved_fraction(old_count, new_count, keys), 4),
            "ideal_moved_fraction": round(ideal_moved_fraction(old_count, new_count), 4)}


def cmd_scale(args: argparse.Namespace) -> int:
    from switchboard import ray_head

    settings = Settings.from_env()
    settings = settings_from_state(settings, read_state(settings))
    if not ray_head.connect(settings):
        print("switchboard scale: no platform is running here (start one with `switchboard up`)", file=sys.stderr)
        return 1
    try:
        result = reshard(settings, args.region or settings.region, args.shards)
    except ValueError as error:  # an unknown region; a count out of range comes back from the router
        print(f"switchboard scale: {error}", file=sys.stderr)
        return 1
    if result.get("changed"):
        result.update(ring_figures(result["from"], result["to"]))
    if args.json:
        print(json.dumps(result))
    elif not result.get("changed"):
        print(f"{args.region or settings.region} already runs {result['shard_count']} shards: nothing moved")
    else:
        moved = result["moved"]
        print(f"{result['region']}: {result['from']} -> {result['to']} shards, placement epoch {result['epoch']}, "
              f"{result['seconds']} s")
        print(f"moved     {moved['mailboxes']} live mailboxes, {moved['conversations']} cached conversations "
              f"(the rest stayed where they were)")
        print(f"ring      moves {result['ring_moved_fraction']:.1%} of all keys; the least possible is "
              f"{result['ideal_moved_fraction']:.1%}")
    return 0


def add_scale_command(commands) -> None:
    scale = commands.add_parser("scale", help="change a region's shard count while it runs (live resharding)")
    scale.add_argument("--region", help="the region (default: the platform's default region)")
    scale.add_argument("--shards", type=int, required=True, metavar="N", help="the new shard count")
    scale.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    scale.set_defaults(run=cmd_scale)
