"""Each region's gateway on its own nodes, and on its mirror's once they are lost, measured (issue
#10 points 1, 3 and 4, the gateways' half): a whole platform on a labelled cluster (a head with no
region, one worker node per region), its gateway replicas placed by their region's label, not
pinned to the head; then every node of one region is removed at once, and the probe times how
long until that region's entry point (`/regions/<region>`) answers healthy again from a replica
on the mirror region's node. Prints one JSON line; runs as its own process (it needs a Ray
cluster of its own: tests/chaos/test_gateway_takeover.py runs it).

    python -m switchboard.chaos.gateway_probe --regions eu,us --lose eu
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
import urllib.request

import ray

from switchboard.actors import registry
from switchboard.addresses import region_http_url
from switchboard.gateway.entry_points import app_name
from switchboard.private_ports import free_port
from switchboard.settings import Settings

from .cluster import LocalCluster
from .region_probe import probe_arguments, probe_regions, report

TAKEOVER_WAIT_S = 120.0
POLL_S = 0.2
SERVE_NAMESPACE = "serve"


def gateway_regions(cluster: LocalCluster, settings: Settings) -> dict[str, list[str]]:
    """For each region's gateway application: the region of the node each live replica runs on."""
    by_node = {worker.node_id: worker.region for worker in cluster.workers}
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith("SERVE_REPLICA::")]
    nodes = registry.actor_nodes(SERVE_NAMESPACE, names)
    placed: dict[str, list[str]] = {}
    for region in settings.regions:
        prefix = f"SERVE_REPLICA::{app_name(settings, region)}#Gateway#"
        placed[region] = sorted(by_node.get(nodes[name], "head") for name in names
                                if name.startswith(prefix) and nodes[name] is not None)
    return placed


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as response:
            return response.status == 200
    except Exception:
        return False


def run(regions: tuple[str, ...], lose: str) -> dict:
    from ray import serve

    from switchboard.local import start_platform, stop_database, stop_platform

    data_dir = tempfile.mkdtemp(prefix="sbgateways-")
    settings = Settings.from_env().replace(
        data_dir=data_dir, namespace=f"switchboard-gateways-{secrets.token_hex(3)}", region=regions[0],
        regions=regions, shards_per_region=1, min_replicas=1, max_replicas=1, host="127.0.0.1", port=free_port(),
        jwt_secret=secrets.token_urlsafe(24))
    cluster = LocalCluster(settings, workers=len(regions), cpus_per_node=1)
    mirror = settings.mirror_of(lose)
    result: dict = {"regions": list(regions), "lost": lose, "mirror": mirror}
    try:
        cluster.start()
        # One proxy, on the head: every node of this cluster shares the machine's loopback.
        serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
        start_platform(settings, keep_postgres=False)
        result["before"] = gateway_regions(cluster, settings)
        url = region_http_url(settings, lose)
        lost_at = time.monotonic()
        for worker in [worker for worker in cluster.workers if worker.region == lose]:
            cluster.remove_worker(worker)
        while True:
            now_at = gateway_regions(cluster, settings)
            if now_at[lose] == [mirror] and healthy(url):
                break
            if time.monotonic() > lost_at + TAKEOVER_WAIT_S:
                result["after"] = now_at
                raise RuntimeError(f"{lose}'s gateway did not answer from {mirror} within {TAKEOVER_WAIT_S} s")
            time.sleep(POLL_S)
        result["gateway_takeover_s"] = round(time.monotonic() - lost_at, 2)
        result["after"] = now_at
        result["others_healthy"] = all(healthy(region_http_url(settings, region)) for region in regions if region != lose)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        try:
            if ray.is_initialized():
                stop_platform(settings)
        finally:
            cluster.shutdown()
            stop_database(settings)
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = probe_arguments(__doc__.splitlines()[0]).parse_args(argv)
    regions = probe_regions(args)
    return report(run(regions, args.lose or regions[0]))


if __name__ == "__main__":
    sys.exit(main())
