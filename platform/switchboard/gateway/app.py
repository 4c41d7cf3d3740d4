"""The Serve deployment: one FastAPI app per replica around a GatewayCore, and how to deploy it."""

from __future__ import annotations

import logging

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from switchboard.errors import Invalid, NotFound, SwitchboardError
from switchboard.settings import Settings
from switchboard.tuning import tune_interpreter

from . import http_api, serve_patches, web, websocket
from .core import GatewayCore
from .drain import DrainWatch, find_serve_replica
from .wire_errors import error_response

log = logging.getLogger(__name__)

APP_NAME = "switchboard"
DEPLOYMENT_NAME = "Gateway"


def build_app(core: GatewayCore) -> FastAPI:
    app = FastAPI(title="Switchboard", version="1", docs_url="/docs", redoc_url=None)
    app.state.core = core
    if core.settings.allowed_origins:
        # Browsers on the listed origins may call the HTTP API (bearer tokens, no cookies, so no
        # credentials mode); the gateway's own origin needs no CORS at all.
        app.add_middleware(CORSMiddleware, allow_origins=list(core.settings.allowed_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
                           max_age=600)
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
    async def __init__(self, settings: Settings, database_url: str):
        replica = find_serve_replica()  # first: tune_interpreter freezes the heap out of gc's view
        tune_interpreter()
        serve_patches.apply(settings.max_frame_bytes, ray.util.get_node_ip_address())
        self.core = GatewayCore(settings, database_url)
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


def gateway_application(settings: Settings, database_url: str, replicas: tuple[int, int] | None = None):
    """The gateway deployment. `replicas` (fewest, most) overrides the settings' bounds alone: a
    change of those is a light update for Serve (no replica restarts), unlike one of the settings
    the replicas are built with."""
    # No CPU reservation: a replica is an I/O-bound asyncio process (as the actors, registry.py).
    fewest, most = replicas or (settings.min_replicas, settings.max_replicas)
    actor_options = {"num_cpus": 0}
    if settings.gateway_node_resource:
        actor_options["resources"] = {settings.gateway_node_resource: 0.001}
    return Gateway.options(
        ray_actor_options=actor_options,
        # A WebSocket holds its request slot for its whole life: the slot count is sockets.
        max_ongoing_requests=settings.sockets_per_replica,
        autoscaling_config={
            "min_replicas": fewest,
            "max_replicas": most,
            "target_ongoing_requests": settings.target_sockets_per_replica,
        },
    ).bind(settings, database_url)


def deploy(settings: Settings, database_url: str, replicas: tuple[int, int] | None = None) -> None:
    """Start Serve on the settings' port (if not running) and deploy the gateway there."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(gateway_application(settings, database_url, replicas), name=APP_NAME, route_prefix="/", blocking=False)
