"""Each region's own gateway entry point: one Serve application per region (docs/ARCHITECTURE.md
"Gateway entry points").

A region's application has its own replicas, placed on that region's nodes, whose GatewayCore
serves from that region (its shards' streams, its health). Serve routes by path prefix, so every
region is reached at `<base>/regions/<region>` on any proxy; the default region's application
also answers at `/` (the URL clients used before regions had entry points), and serves its
`/regions/<default>` path itself (RegionPrefix below), so every region has the same URL shape.

Imports nothing heavy: the CLI and addresses use these names too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from switchboard.settings import Settings, region_pairs

APP_NAME = "switchboard"  # the default region's application (and the one-region platform's)
REGIONS_PATH = "/regions"


def app_name(settings: Settings, region: str) -> str:
    return APP_NAME if region == settings.region else f"{APP_NAME}-{region}"


def region_path(region: str) -> str:
    """The path of a region's entry point on every Serve proxy."""
    return f"{REGIONS_PATH}/{region}"


def route_prefix(settings: Settings, region: str) -> str:
    return "/" if region == settings.region else region_path(region)


def failover_order(settings: Settings, region: str) -> list[str]:
    """The regions a client of `region` should try, in order: its own, then its mirror (whose
    nodes take the region's actors when it is lost), then the rest in the settings' order."""
    mirror = settings.mirror_of(region)
    ordered = [region] + ([mirror] if mirror else [])
    return ordered + [other for other in settings.regions if other not in ordered]


def public_url(settings: Settings, region: str) -> str:
    """Where a client reaches the region's gateway: the operator's URL for it
    (SWITCHBOARD_REGION_URLS), else the region's path on the host the client already uses."""
    url = region_pairs(settings.region_urls).get(region)
    return region_path(region) if url is None else url.rstrip("/")


def public_origins(settings: Settings) -> list[str]:
    """The origins of the configured region URLs, as a page's CSP connect-src must list them
    (https and wss alike: 'self' covers only the page's own host)."""
    origins = []
    for url in region_pairs(settings.region_urls).values():
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        origins += [f"{parts.scheme}://{parts.netloc}", f"{'wss' if secure else 'ws'}://{parts.netloc}"]
    return sorted(set(origins))


class RegionPrefix:
    """ASGI middleware for the default region's application, mounted at `/`: a request under
    `/regions/<default>` is served as if that were its root (ASGI root_path), as Serve does for
    every other region's application by its route prefix."""

    def __init__(self, app, region: str):
        self.app = app
        self.prefix = region_path(region)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            path = scope.get("path", "")
            prefix = root + self.prefix
            if path == prefix or path.startswith(prefix + "/"):
                scope = dict(scope, root_path=prefix)
        await self.app(scope, receive, send)
