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


# The Ray node label that puts a node in a region (`ray start --labels region=eu`).
REGION_LABEL = "region"


def node_regions() -> dict[str, str]:
    """node id -> region, for the live nodes that carry a region label."""
    regions = {}
    for node in ray.nodes():
        region = node.get("Labels", {}).get(REGION_LABEL)
        if node.get("Alive") and region:
            regions[node["NodeID"]] = region
    return regions


def labelled_regions() -> set[str]:
    """The regions that live nodes of this cluster are labelled with (none on a one-node run)."""
    return set(node_regions().values())


def actor_nodes(namespace: str, names: list[str]) -> dict[str, str | None]:
    """Each named actor's node id (None: not alive now). Its state is read from the GCS actor
    table (ray.util.state would need the dashboard), which names no namespace: the actor is
    found by the id its name has in `namespace`."""
    ids = {}
    for name in names:
        try:
            ids[name] = ray.get_actor(name, namespace=namespace)._actor_id.hex()
        except ValueError:  # no such actor (yet)
            pass
    table = ray._private.state.actors()
    found: dict[str, str | None] = dict.fromkeys(names)
    for name, actor_id in ids.items():
        actor = table.get(actor_id) or {}
        if actor.get("State") == "ALIVE":
            found[name] = actor["Address"]["NodeID"]
    return found


def region_placement(settings: Settings, region: str, labelled: set[str]) -> dict:
    """Ray options that keep an actor of `region` on that region's nodes, and on its mirror's
    nodes once they are all gone: Ray re-evaluates fallback_strategy when it restarts an actor
    (measured on a labelled Cluster: the actor came back on the mirror's node). Nothing on a
    cluster with no region labels (a one-node local run keeps every region on its one node)."""
    if not labelled:
        return {}
    options: dict = {"label_selector": {REGION_LABEL: region}}
    mirror = settings.mirror_of(region)
    if mirror is not None:
        options["fallback_strategy"] = [{"label_selector": {REGION_LABEL: mirror}}]
    return options


def placement_problem(settings: Settings, labelled: set[str]) -> str | None:
    """Why some region's actors could not be placed on this cluster (None if they all can): on a
    cluster whose nodes carry region labels, a region with no node of its own and none of its
    mirror's would wait for a node forever."""
    if not labelled:
        return None
    for region in settings.regions:
        mirror = settings.mirror_of(region)
        if region not in labelled and mirror not in labelled:
            return (f"no live node is labelled region={region}" + (f" or region={mirror} (its mirror)" if mirror else "")
                    + f"; the nodes' regions are {', '.join(sorted(labelled))}: set SWITCHBOARD_REGIONS to those, "
                    f"or start nodes with `ray start --labels region={region}`")
    return None


def actor_options(settings: Settings, name: str, region: str, labelled: set[str] | None = None) -> dict:
    """Named, detached, restarted forever; on the region's nodes (or its mirror's) where the
    cluster's nodes carry region labels.

    `labelled`: the cluster's labelled regions, if the caller already has them (a router creating
    its shards asks the GCS once, not once per shard).

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
    if labelled is None and ray.is_initialized():
        labelled = labelled_regions()
    options.update(region_placement(settings, region, labelled or set()))
    return options


def get_actor(settings: Settings, name: str):
    return ray.get_actor(name, namespace=settings.namespace)
