"""Start and stop a whole platform: PostgreSQL (embedded unless DATABASE_URL), Ray, the region
routers and their shards, and the Serve gateway. Used by the CLI, scripts/run and the tests."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path

import ray
from ray import serve

from switchboard.actors import registry
from switchboard.actors.remote import start_region
from switchboard.addresses import http_url, region_http_url, ws_url
from switchboard.ray_loopback import LOOPBACK, keep_ray_on_loopback
from switchboard.settings import Settings, SettingsError
from switchboard.storage.database import make_engine, migrate, start_embedded_postgres, stop_embedded_postgres

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120
CHECKPOINT_TIMEOUT_S = 30


@dataclasses.dataclass
class Platform:
    settings: Settings
    database_url: str
    embedded_postgres: bool

    @property
    def http_url(self) -> str:
        return http_url(self.settings)

    @property
    def ws_url(self) -> str:
        return ws_url(self.settings)


# Serve's HAProxy, set for long-lived WebSockets (measured with benchmarks/capacity.py: opening
# 3,000 sockets on the old defaults stalled at 2,100 for two minutes, then the first 2,000 dropped):
# - Serve reloads HAProxy whenever replicas come or go; the old HAProxy process keeps its open
#   connections, but Serve's default hard-stop-after (120 s) then cuts them all: every scale-up
#   dropped every socket two minutes later. A day instead: they end when their clients leave.
# - leastconn counts only the new process's own connections, so after a reload it sent every new
#   socket to the replica that was already full (refused 1013, tried again, the same replica);
#   round robin alternates.
# - The global connection cap (4,096) was below the sockets the replicas admit; the replicas' own
#   caps (SWITCHBOARD_SOCKETS_PER_REPLICA) are the bound that matters. HAProxy needs about 2.5 file
#   descriptors per connection (client, replica, splice pipes) and will not start if its cap needs
#   more than the process may open, so the cap follows the machine's limit (haproxy_maxconn).
# - A replica port freed by a downscale is kept out of use while an old process may still route
#   keep-alive requests to it: 10 minutes, not hard-stop-after plus 30 s (a day of ports).
HAPROXY_FOR_SOCKETS = {
    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "86400",
    "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": "roundrobin",
    "RAY_SERVE_PORT_QUARANTINE_S": "600",
}
HAPROXY_MAXCONN_MAX = 65536
HAPROXY_FDS_PER_CONNECTION = 2.5
HAPROXY_SPARE_FDS = 500  # listeners, health checks, the admin socket, logs


def haproxy_maxconn(open_files_limit: int | None = None) -> int:
    """The HAProxy connection cap this machine allows: 65,536, or what the hard limit on open
    files (`ulimit -Hn`) leaves room for (7,800 with 20,000)."""
    if open_files_limit is None:
        open_files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if open_files_limit == resource.RLIM_INFINITY:
        return HAPROXY_MAXCONN_MAX
    return max(1024, min(HAPROXY_MAXCONN_MAX, int((open_files_limit - HAPROXY_SPARE_FDS) / HAPROXY_FDS_PER_CONNECTION)))


def ray_environment(settings: Settings) -> dict[str, str]:
    """Environment every node's Ray processes must start with (raylet, Serve controller, replicas);
    cluster.yaml sets the same (tests/unit/test_cluster_yaml.py keeps the two in step).

    RAY_AUTH_MODE=token: Ray 2.60's token authentication; without it anyone who reaches a Ray port
    can run code on the cluster. Every process needs the token (~/.ray/auth_token, ensure_ray_token).
    RAY_worker_niceness=0: Ray starts workers at niceness 15 by default, which on a shared node
    hands the CPU to anything else first; these workers are the latency-critical service.
    RAY_timeout_ms_task_wait_for_death_info=0: a call to an actor whose process died otherwise
    waits up to 1 s for the death's cause before it fails, and a call made meanwhile waits with it
    (measured: a restarted actor's first call arrived 0.85 s after the kill at 100 ms, 1.85 s at the
    default, 0.05 s + the process start at 0). The error is then ActorUnavailableError rather than
    ActorDiedError; every caller of a shard retries both, so the cause only cost recovery time.
    The Serve flags choose direct ingress (see Settings.direct_ingress) and run user code on the
    replica's own event loop instead of a second thread (one less hand-over per frame); HAProxy is
    started through switchboard-haproxy (haproxy_wrapper.py: the client's address for the replica).
    """
    environment = {"RAY_AUTH_MODE": "token", "RAY_worker_niceness": "0",
                   "RAY_timeout_ms_task_wait_for_death_info": "0"}
    if settings.direct_ingress:
        environment.update({
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            # A stopping replica stays open this long so load balancers can deregister it; the
            # HAProxy in front is Serve's own and is updated at once, and the 30 s default made
            # every `switchboard down` and redeploy wait half a minute.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_wrapper_path(),
            **HAPROXY_FOR_SOCKETS,
            "RAY_SERVE_HAPROXY_MAXCONN": str(haproxy_maxconn()),
        })
    return environment


def loopback_environment() -> dict[str, str]:
    """What a local run (one machine, nothing of Ray's for the network) adds: HAProxy's stats and
    metrics ports on loopback too (ray_loopback.py does Ray's own servers)."""
    return {"SWITCHBOARD_HAPROXY_BIND": LOOPBACK}


def haproxy_wrapper_path() -> str:
    """The switchboard-haproxy script installed beside this interpreter (the venv's bin/)."""
    return str(Path(sys.executable).parent / "switchboard-haproxy")


def ensure_ray_token() -> None:
    """Ray's token auth, for this process and what it starts: the mode on (Ray read its config
    at import, before RAY_AUTH_MODE was set here, so it is read again) and a token to use (made,
    in ~/.ray/auth_token, if there is none). Nodes of a multi-node cluster share the token
    (cluster.yaml's file_mounts)."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


def init_ray(settings: Settings, address: str | None = None, loopback: bool = False, **options) -> None:
    """Connect to (or start, with address None or "local") Ray with the platform's environment.
    loopback: this machine's Ray listens on 127.0.0.1 only (a local run; ray_loopback.py)."""
    os.environ.update(ray_environment(settings))
    ensure_ray_token()
    if loopback:
        os.environ.update(loopback_environment())
        keep_ray_on_loopback()
        options.setdefault("_node_ip_address", LOOPBACK)
        if address in (None, "local"):
            options.setdefault("dashboard_host", LOOPBACK)
    ray.init(address=address, namespace=settings.namespace, log_to_driver=False, **options)


def resolve_database(settings: Settings, keep_running: bool = True) -> tuple[str, bool]:
    """The database URL to use, starting the embedded PostgreSQL when none is configured."""
    if settings.database_url:
        return settings.database_url, False
    return start_embedded_postgres(settings.data_dir, keep_running=keep_running), True


def prepare_database(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def start_platform(settings: Settings, ray_address: str | None = None, keep_postgres: bool = True) -> Platform:
    """Bring everything up and wait until GET /v1/health answers ok. Refuses (SettingsError) to
    serve other machines with the development secret or sign-in (Settings.check_exposure)."""
    settings.check_exposure()
    database_url, embedded = resolve_database(settings, keep_running=keep_postgres)
    prepare_database(database_url)
    if not ray.is_initialized():
        init_ray(settings, ray_address)
    problem = registry.placement_problem(settings, registry.labelled_regions())
    if problem is not None:
        raise SettingsError(problem)
    routers = [start_region(settings, database_url, region) for region in settings.regions]
    ray.get([router.ready.remote() for router in routers], timeout=READY_TIMEOUT_S)
    from switchboard.gateway.app import deploy

    deploy(settings, database_url)
    platform = Platform(settings=settings, database_url=database_url, embedded_postgres=embedded)
    others = [region_http_url(settings, region) for region in settings.regions if region != settings.region]
    for url in [platform.http_url, *others]:
        wait_healthy(url)  # every region's entry point (gateway/entry_points.py)
    return platform


def wait_healthy(http_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{http_url}/v1/health", timeout=5) as response:
                if response.status == 200:
                    return
        except Exception as error:
            last_error = error
        time.sleep(0.5)
    raise TimeoutError(f"platform at {http_url} not healthy after {timeout_s}s: {last_error}")


def stop_platform(settings: Settings) -> None:
    """Remove the Serve app and the platform's detached actors (Ray itself is left to the caller)."""
    try:
        serve.shutdown()
    except Exception as error:
        log.warning("serve shutdown: %s", error)
    names = [registry.router_name(region) for region in settings.regions]
    names += [name for region in settings.regions for name in shard_names(settings, region)]
    checkpoint_actors(settings, names)
    for name in names:
        try:
            ray.kill(registry.get_actor(settings, name), no_restart=True)
        except ValueError:
            pass


def shard_names(settings: Settings, region: str) -> list[str]:
    """The region's shards, as its router places them (the one source of the shard count); the
    settings' count only if the router is gone."""
    try:
        router = registry.get_actor(settings, registry.router_name(region))
        return list(ray.get(router.info.remote(), timeout=CHECKPOINT_TIMEOUT_S)["shard_names"])
    except Exception as error:
        log.warning("router of %s did not say its shards (%s): using the settings' count", region, error)
        return [registry.shard_name(region, i) for i in range(settings.shards_per_region)]


def checkpoint_actors(settings: Settings, names: list[str]) -> None:
    """Drain: every router and shard writes its state, so the next start replays nothing."""
    refs = []
    for name in names:
        try:
            refs.append(registry.get_actor(settings, name).checkpoint.remote())
        except ValueError:
            pass  # never started, or already gone
    done, late = ray.wait(refs, num_returns=len(refs), timeout=CHECKPOINT_TIMEOUT_S) if refs else ([], [])
    for ref in done:
        try:
            ray.get(ref)
        except Exception as error:  # a checkpoint only saves work on the next start
            log.warning("checkpoint on stop failed: %s", error)
    if late:
        log.warning("%d checkpoints on stop did not finish in %d s", len(late), CHECKPOINT_TIMEOUT_S)


def stop_database(settings: Settings) -> bool:
    return False if settings.database_url else stop_embedded_postgres(settings.data_dir)
