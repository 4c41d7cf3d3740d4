"""The Serve deployment: one FastAPI app per replica around a GatewayCore, and how to deploy it."""

from __future__ import annotations

import logging

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from switchboard.actors import registry
from switchboard.errors import Invalid, NotFound, SwitchboardError
from switchboard.settings import Settings
from switchboard.tuning import tune_interpreter

from . import entry_points, http_api, serve_patches, web, websocket
from .core import GatewayCore
from .drain import DrainWatch, find_serve_replica
from .entry_points import APP_NAME, RegionPrefix
from .wire_errors import error_response

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Gateway"  # in each region's application (entry_points.py)
HEALTH_CHECK_PERIOD_S = 2.0


def build_app(core: GatewayCore) -> FastAPI:
    app = FastAPI(title="Switchboard", version="1", docs_url="/docs", redoc_url=None)
    app.state.core = core
    if core.settings.allowed_origins:
        # Browsers on the listed origins may call the HTTP API (bearer tokens, no cookies, so no
        # credentials mode); the gateway's own origin needs no CORS at all.
        app.add_middleware(CORSMiddleware, allow_origins=list(core.settings.allowed_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
                           max_age=600)
    if core.home_region == core.settings.region:
        app.add_middleware(RegionPrefix, region=core.home_region)
    app.include_router(http_api.router)
    app.include_router(http_api.authenticated)
    app.include_router(websocket.router)
    app.include_router(web.router)

    @app.exception_handler(SwitchboardError)
    async def on_domain_error(_: Request, error: SwitchboardError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, error: RequestValidationError):
        return error_response(Invalid(str(error.errors()[:3])), status=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            return error_response(NotFound("no such endpoint"))
        return error_response(Invalid(str(error.detail)), status=error.status_code)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, error: Exception):
        log.exception("unhandled error")
        return error_response(SwitchboardError("internal error"))

    return app


@serve.deployment(name=DEPLOYMENT_NAME, graceful_shutdown_timeout_s=10)
@serve.ingress()
class Gateway:
    async def __init__(self, settings: Settings, database_url: str, region: str | None = None):
        replica = find_serve_replica()  # first: tune_interpreter freezes the heap out of gc's view
        tune_interpreter()
        serve_patches.apply(settings.max_frame_bytes, ray.util.get_node_ip_address())
        self.core = GatewayCore(settings, database_url, home_region=region)
        await self.core.start()
        self.drain_watch = DrainWatch.for_replica(replica, self.core.drain)
        if self.drain_watch is not None:
            self.drain_watch.start()

    def __serve_build_asgi_app__(self):
        return build_app(self.core)

    def check_health(self):
        """Serve restarts a replica whose check fails: only this replica's own machinery counts
        (its delivery pumps), never the database or the shards, which /v1/health reports."""
        problem = self.core.machinery_problem()
        if problem is not None:
            raise RuntimeError(problem)

    async def cross_region_calls(self) -> dict[str, int]:
        """This replica's Ray calls to other regions' actors, by kind (core.cross_region_calls)."""
        return self.core.cross_region_calls()

    async def __del__(self):
        """Last step of a stop (Serve calls it once no socket is left): close anything the drain
        watch missed, then stop the delivery streams."""
        if self.drain_watch is not None:
            self.drain_watch.stop()
        await self.core.drain()
        await self.core.stop()


def gateway_application(settings: Settings, database_url: str, replicas: tuple[int, int] | None = None,
                        region: str | None = None, labelled: set[str] | None = None):
    """The gateway deployment of `region` (default: the default region). `replicas` (fewest,
    most) overrides the settings' bounds alone: a change of those is a light update for Serve (no
    replica restarts), unlike one of the settings the replicas are built with. On a cluster whose
    nodes carry region labels (`labelled`), the replicas are placed on the region's nodes, and on
    its mirror's once those are gone, as its shards are (registry.region_placement)."""
    region = region or settings.region
    # No CPU reservation: a replica is an I/O-bound asyncio process (as the actors, registry.py).
    fewest, most = replicas or (settings.min_replicas, settings.max_replicas)
    actor_options: dict = {"num_cpus": 0}
    if settings.gateway_node_resource:
        # An explicit resource wins over the region's labels (the chaos run keeps every replica
        # on its head node, so that node faults take shards, never a gateway).
        actor_options["resources"] = {settings.gateway_node_resource: 0.001}
    else:
        actor_options.update(registry.region_placement(settings, region, labelled or set()))
    return Gateway.options(
        ray_actor_options=actor_options,
        # A WebSocket holds its request slot for its whole life: the slots are the sockets the
        # replica admits (websocket.py refuses the one past them) and the HTTP calls' own slots.
        max_ongoing_requests=settings.sockets_per_replica + settings.http_slots_per_replica,
        # Serve finds a replica dead (its node lost) at its next health check: every 10 s by
        # default, most of a lost region's gateway takeover (11.5 s measured; gateway_probe.py).
        # check_health is a method call that reads two flags: cheap at this rate.
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        autoscaling_config={
            "min_replicas": fewest,
            "max_replicas": most,
            "target_ongoing_requests": settings.target_sockets_per_replica,
            "upscale_delay_s": settings.upscale_delay_s,
            "downscale_delay_s": settings.downscale_delay_s,
        },
    ).bind(settings, database_url, region)


def deploy(settings: Settings, database_url: str, replicas: tuple[int, int] | None = None) -> None:
    """Start Serve on the settings' port (if not running) and deploy one gateway application per
    region (entry_points.py), all at once: Serve starts their replicas side by side."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    labelled = registry.labelled_regions()
    serve.run_many([serve.RunTarget(gateway_application(settings, database_url, replicas, region, labelled),
                                    name=entry_points.app_name(settings, region),
                                    route_prefix=entry_points.route_prefix(settings, region))
                    for region in settings.regions], wait_for_applications_running=False)
