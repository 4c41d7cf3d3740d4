"""Actor names, the namespace, placement by region, and the restart policy, in one place."""

from __future__ import annotations

import ray

from switchboard.settings import Settings

# Many long-lived calls (one delivery stream per gateway replica, sockets attaching) are open on
# a shard at once; the async actor must not cap them at Ray's default of 1000.
ACTOR_MAX_CONCURRENCY = 100_000


def router_name(region: str) -> str:
    return f"router:{region}"


def shard_name(region: str, index: int) -> str:
    return f"shard:{region}:{index}"


def region_resource(region: str) -> str:
    return f"region:{region}"


def actor_options(settings: Settings, name: str, region: str) -> dict:
    """Named, detached, restarted forever; pinned to the region's nodes where the cluster has them.

    num_cpus=0: these are I/O-bound asyncio processes; on a 2-core node a CPU reservation each
    would leave no room for the Serve replicas. Restarted actors rebuild from PostgreSQL.
    """
    options = {
        "name": name,
        "namespace": settings.namespace,
        "lifetime": "detached",
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": ACTOR_MAX_CONCURRENCY,
        "num_cpus": 0,
        "get_if_exists": True,
    }
    resource = region_resource(region)
    if ray.is_initialized() and resource in ray.cluster_resources():
        options["resources"] = {resource: 0.001}
    return options


def get_actor(settings: Settings, name: str):
    return ray.get_actor(name, namespace=settings.namespace)
