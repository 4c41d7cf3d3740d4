"""A local multi-node Ray cluster for the chaos run (ray.cluster_utils.Cluster on one machine).

The head node carries no region label: the driver, Serve's controller, its proxy and the gateway
replicas (which ask for the head's own INGRESS_RESOURCE) stay there.
The worker nodes carry the label `region=<region>` (the regions in turn), so each region's router
and shards are placed on them (actors/registry.py). Removing a worker node kills the actors on it;
Ray restarts them on another worker of the region (or of its mirror); then a fresh worker is added.

Ray's own processes read the platform's environment (switchboard.local.ray_environment) when they
start, so it is put in os.environ before the first node starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile

import ray
from ray.cluster_utils import Cluster

from switchboard.actors import registry
from switchboard.local import ensure_ray_token, loopback_environment, ray_environment
from switchboard.ray_loopback import LOOPBACK, keep_ray_on_loopback
from switchboard.private_ports import private_serve_ports
from switchboard.settings import Settings

log = logging.getLogger(__name__)

# A node that dies without saying so (the `node_remove` fault kills its processes) is declared
# dead after period x threshold. Ray's defaults (3 s x 5) would make every node loss cost 15 s
# before its actors even start elsewhere; a local cluster can afford a tighter watch.
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
WORKER_OBJECT_STORE_BYTES = 100 * 1024 * 1024
HEAD_OBJECT_STORE_BYTES = 200 * 1024 * 1024
START_ATTEMPTS = 3
# The head node's own resource, which the gateway replicas ask for (Settings.gateway_node_resource):
# they stay on the head with the driver and Serve's controller, so a node_remove takes shards and
# never the replicas (a lost replica is the gateway_kill fault's business).
INGRESS_RESOURCE = "switchboard-ingress"


@dataclasses.dataclass
class WorkerNode:
    node: object  # ray._private.node.Node
    number: int
    region: str

    @property
    def node_id(self) -> str:
        return self.node.node_id


class AddressFile:
    """Ray's Cluster writes its address to /tmp/ray/ray_current_cluster whatever its temp_dir (and
    fails on a fresh machine, where /tmp/ray does not exist yet). That file is where
    `ray.init(address="auto")` and `switchboard status` look for a running Ray, so the one found
    before the run is put back afterwards."""

    def __init__(self):
        self.path = ray._private.utils.get_ray_address_file(None)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            with open(self.path) as file:
                self.previous: str | None = file.read()
        except FileNotFoundError:
            self.previous = None

    def restore(self) -> None:
        try:
            if self.previous is None:
                os.remove(self.path)
            else:
                with open(self.path, "w") as file:
                    file.write(self.previous)
        except OSError as error:
            log.warning("restoring %s: %s", self.path, error)


class LocalCluster:
    def __init__(self, settings: Settings, workers: int = 2, cpus_per_node: int = 2):
        self.settings = settings
        self.worker_count = workers
        self.cpus_per_node = cpus_per_node
        self.temp_dir = tempfile.mkdtemp(prefix="sbchaos-", dir="/tmp")  # short: unix socket paths
        self.cluster: Cluster | None = None
        self.workers: list[WorkerNode] = []
        self._added = 0
        self._address_file: AddressFile | None = None

    # ---- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        os.environ.update(ray_environment(self.settings))
        # Loopback only, with Ray's token auth, like every local run (switchboard/ray_loopback.py).
        os.environ.update(loopback_environment())
        keep_ray_on_loopback()
        ensure_ray_token()
        os.environ.update(private_serve_ports())  # another platform may share this machine
        self._address_file = AddressFile()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_nodes()
                break
            except Exception as error:
                # Ray gives a node 30 s (fixed) to register; on a busy 2-core machine it may not.
                log.warning("cluster start attempt %d failed: %s", attempt, error)
                self._remove_nodes()
                if attempt == START_ATTEMPTS:
                    raise
        ray.init(address=self.cluster.address, namespace=self.settings.namespace, log_to_driver=False,
                 _node_ip_address=LOOPBACK)

    def _start_nodes(self) -> None:
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": self.cpus_per_node,
                "temp_dir": self.temp_dir,
                "include_dashboard": False,
                "node_ip_address": LOOPBACK,
                "object_store_memory": HEAD_OBJECT_STORE_BYTES,
                "_system_config": dict(FAST_FAILURE_DETECTION),
                "resources": {INGRESS_RESOURCE: 1000},
            },
        )
        for _ in range(self.worker_count):
            self.add_worker()
        self.cluster.wait_for_nodes()

    def add_worker(self, region: str | None = None) -> WorkerNode:
        """A worker node of `region` (default: the region with the fewest nodes, the first of
        those in the settings' order: so a node_add after a node_remove refills the region that
        lost one, instead of leaving it and its mirror to the next loss)."""
        if region is None:
            counts = {name: 0 for name in self.settings.regions}
            for worker in self.workers:
                counts[worker.region] = counts.get(worker.region, 0) + 1
            region = min(self.settings.regions, key=lambda name: counts[name])
        self._added += 1
        node = self.cluster.add_node(
            num_cpus=self.cpus_per_node,
            node_ip_address=LOOPBACK,
            labels={registry.REGION_LABEL: region},
            object_store_memory=WORKER_OBJECT_STORE_BYTES,
        )
        worker = WorkerNode(node=node, number=self._added, region=region)
        self.workers.append(worker)
        return worker

    def remove_worker(self, worker: WorkerNode) -> None:
        """Kill every process of the node at once, as a machine loss would (no graceful exit)."""
        self.workers.remove(worker)
        self.cluster.remove_node(worker.node, allow_graceful=False)

    def shutdown(self) -> None:
        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            self._remove_nodes()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if self._address_file is not None:
                self._address_file.restore()

    def _remove_nodes(self) -> None:
        if self.cluster is None:
            return
        try:
            self.cluster.shutdown()  # the worker nodes
            if self.cluster.head_node is not None:
                self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        except Exception as error:
            log.warning("cluster shutdown: %s", error)
        self.cluster = None
        self.workers = []

    # ---- where things run --------------------------------------------------------------------------

    def worker_hosting(self, node_id: str) -> WorkerNode | None:
        return next((w for w in self.workers if w.node_id == node_id), None)

    def actor_node(self, name: str) -> str | None:
        """The node id an actor of the platform's namespace runs on (None if not alive)."""
        return registry.actor_nodes(self.settings.namespace, [name])[name]
