"""Where the platform is: one base URL gives both the HTTP API and the WebSocket endpoint.

Accepted forms: http(s)://host:port, ws(s)://host:port, or either with /v1/ws at the end.
"""

from __future__ import annotations

from urllib.parse import urlsplit

WS_PATH = "/v1/ws"


def http_url(base_url: object) -> str:
    """http(s)://host:port, with no trailing path."""
    parts = urlsplit(str(base_url).strip())  # str(): an httpx.URL will do too
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"{base_url!r} is not an http(s):// or ws(s):// URL of the platform")
    return f"{scheme}://{parts.netloc}"


def ws_url(base_url: str) -> str:
    """ws(s)://host:port/v1/ws."""
    return "ws" + http_url(base_url).removeprefix("http") + WS_PATH
