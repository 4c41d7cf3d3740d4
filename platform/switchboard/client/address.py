"""Where the platform is: one base URL gives both the HTTP API and the WebSocket endpoint.

Accepted forms: http(s)://host:port, ws(s)://host:port, either with a region's path
(`/regions/eu`, docs/ARCHITECTURE.md "Gateway entry points"), and any of those with /v1/ws at
the end.
"""

from __future__ import annotations

from urllib.parse import urlsplit

WS_PATH = "/v1/ws"


def http_url(base_url: object) -> str:
    """http(s)://host:port[/path], with no trailing slash, /v1/ws, query or fragment."""
    parts = urlsplit(str(base_url).strip())  # str(): an httpx.URL will do too
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"{base_url!r} is not an http(s):// or ws(s):// URL of the platform")
    path = parts.path.rstrip("/").removesuffix(WS_PATH).rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"


def ws_url(base_url: str) -> str:
    """ws(s)://host:port[/path]/v1/ws."""
    return "ws" + http_url(base_url).removeprefix("http") + WS_PATH
