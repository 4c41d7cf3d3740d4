"""Where the Serve port is reached from this machine: the one place URLs are built (the CLI, the
client commands and switchboard.local use it). Imports nothing heavy, so `switchboard token`
stays instant."""

from __future__ import annotations

from switchboard.settings import Settings

# A wildcard bind serves every interface; from this machine it is reached on loopback.
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def local_host(settings: Settings) -> str:
    return "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host


def http_url(settings: Settings) -> str:
    return f"http://{local_host(settings)}:{settings.port}"


def ws_url(settings: Settings) -> str:
    return f"ws://{local_host(settings)}:{settings.port}/v1/ws"


def region_http_url(settings: Settings, region: str) -> str:
    """The region's gateway entry point from this machine (gateway/entry_points.py)."""
    return f"{http_url(settings)}/regions/{region}"


def region_ws_url(settings: Settings, region: str) -> str:
    return f"ws://{local_host(settings)}:{settings.port}/regions/{region}/v1/ws"
