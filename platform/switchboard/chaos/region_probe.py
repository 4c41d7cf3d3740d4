"""Region placement and takeover on a labelled cluster, measured (issue #10 points 1 and 4):
a head with no region and one worker node per region; every region's router and shards start on
their own region's node; then every node of one region is removed at once, and the probe times
how long until that region's router and shards run on the mirror region's node and answer
healthy again (recovered from PostgreSQL). Prints one JSON line. Runs as its own process: it
needs a Ray cluster of its own (tests/chaos/test_region_takeover.py runs it).

    python -m switchboard.chaos.region_probe --regions eu,us,ap --lose eu
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time

import ray

from switchboard.actors import registry
from switchboard.settings import Settings

from .cluster import LocalCluster

TAKEOVER_WAIT_S = 90.0
POLL_S = 0.1


def region_actors(settings: Settings, region: str) -> list[str]:
    return [registry.router_name(region)] + [registry.shard_name(region, i) for i in range(settings.shards_per_region)]


def node_regions(cluster: LocalCluster) -> dict[str, str]:
    return {worker.node_id: worker.region for worker in cluster.workers}


def placement(cluster: LocalCluster, settings: Settings) -> dict[str, str | None]:
    """Each actor of the platform: the region of the node it runs on (None: not running)."""
    regions = node_regions(cluster)
    return {name: regions.get(cluster.actor_node(name), "head" if cluster.actor_node(name) else None)
            for region in settings.regions for name in region_actors(settings, region)}


def healthy(settings: Settings, region: str) -> bool:
    try:
        shards = [registry.get_actor(settings, registry.shard_name(region, i)) for i in range(settings.shards_per_region)]
        answers = ray.get([shard.health.remote() for shard in shards], timeout=2)
        router = registry.get_actor(settings, registry.router_name(region))
        ray.get(router.placement.remote(), timeout=2)
    except Exception:
        return False
    return all(answer.get("ok") for answer in answers)


def hand_back(cluster: LocalCluster, settings: Settings, region: str) -> dict:
    """The region's node returns: time until its router moves its actors home (planned handoff)
    and every one answers healthy there, and the longest gap in answers of each shard meanwhile."""
    cluster.add_worker(region)
    returned_at = time.monotonic()
    names = region_actors(settings, region)
    shards = [registry.get_actor(settings, name) for name in names[1:]]
    last_answer = dict.fromkeys(range(len(shards)), time.monotonic())
    longest_gap = dict.fromkeys(range(len(shards)), 0.0)
    deadline = returned_at + TAKEOVER_WAIT_S
    while True:
        for index, shard in enumerate(shards):
            try:
                if ray.get(shard.health.remote(), timeout=0.5).get("ok"):
                    now = time.monotonic()
                    longest_gap[index] = max(longest_gap[index], now - last_answer[index])
                    last_answer[index] = now
            except Exception:
                pass
        now_at = placement(cluster, settings)
        if all(now_at[name] == region for name in names) and healthy(settings, region):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{region}'s actors did not move home within {TAKEOVER_WAIT_S} s: {now_at}")
        time.sleep(0.05)
    return {"handback_s": round(time.monotonic() - returned_at, 2), "home": now_at,
            "handback_pause_s": round(max(longest_gap.values()), 2)}


def run(regions: tuple[str, ...], lose: str, shards: int) -> dict:
    from switchboard.actors.remote import start_region
    from switchboard.local import prepare_database, resolve_database, stop_database

    data_dir = tempfile.mkdtemp(prefix="sbregions-")
    settings = Settings.from_env().replace(
        data_dir=data_dir, namespace=f"switchboard-regions-{secrets.token_hex(3)}", region=regions[0],
        regions=regions, shards_per_region=shards, jwt_secret=secrets.token_urlsafe(24))
    cluster = LocalCluster(settings, workers=len(regions), cpus_per_node=1)
    result: dict = {"regions": list(regions), "lost": lose, "mirror": settings.mirror_of(lose)}
    try:
        cluster.start()
        database_url, _ = resolve_database(settings, keep_running=False)
        prepare_database(database_url)
        routers = [start_region(settings, database_url, region) for region in regions]
        ray.get([router.placement.remote() for router in routers], timeout=120)
        deadline = time.monotonic() + 60
        while not all(healthy(settings, region) for region in regions):
            if time.monotonic() > deadline:
                raise RuntimeError("the regions did not become healthy")
            time.sleep(0.5)
        result["before"] = placement(cluster, settings)

        lost_workers = [worker for worker in cluster.workers if worker.region == lose]
        lost_at = time.monotonic()
        for worker in lost_workers:
            cluster.remove_worker(worker)
        deadline = lost_at + TAKEOVER_WAIT_S
        while True:
            now_at = placement(cluster, settings)
            moved = all(now_at[name] == result["mirror"] for name in region_actors(settings, lose))
            if moved and healthy(settings, lose):
                break
            if time.monotonic() > deadline:
                result["after"] = now_at
                raise RuntimeError(f"{lose} was not taken over within {TAKEOVER_WAIT_S} s")
            time.sleep(POLL_S)
        result["takeover_s"] = round(time.monotonic() - lost_at, 2)
        result["after"] = now_at
        result["others_healthy"] = all(healthy(settings, region) for region in regions if region != lose)
        result.update(hand_back(cluster, settings, lose))
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        try:
            cluster.shutdown()
        finally:
            stop_database(settings)
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


def probe_arguments(description: str) -> argparse.ArgumentParser:
    """The command line the region probes share: the regions, and the one to lose."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--regions", default="eu,us", help="comma-separated regions, one worker node each")
    parser.add_argument("--lose", default=None, help="the region whose nodes are removed (default: the first)")
    return parser


def probe_regions(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(part.strip() for part in args.regions.split(",") if part.strip())


def report(result: dict) -> int:
    """Print the probe's one JSON line; its exit status."""
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


def main(argv: list[str] | None = None) -> int:
    parser = probe_arguments(__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1, help="shards per region")
    args = parser.parse_args(argv)
    regions = probe_regions(args)
    return report(run(regions, args.lose or regions[0], args.shards))


if __name__ == "__main__":
    sys.exit(main())
