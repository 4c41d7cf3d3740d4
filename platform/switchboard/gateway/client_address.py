"""Where a request or socket really comes from, and whether a browser's Origin may use us.

Behind Serve's HAProxy (direct ingress) every connection reaches the replica from the node's own
HAProxy, so the peer address says nothing; HAProxy adds the client's address to X-Forwarded-For
(the switchboard-haproxy wrapper turns that on). The header is believed only from a peer in
Settings.trusted_proxies, and only its last entry (the one the trusted proxy wrote; earlier ones
are whatever the client sent).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit


@lru_cache(maxsize=16)
def trusted_networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def client_address(scope: dict, headers, proxies: tuple[str, ...]) -> str:
    client = scope.get("client")
    peer = client[0] if client else ""
    # The last header line (HAProxy adds its own after any the client sent) and its last entry.
    forwarded = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
    if forwarded and forwarded[-1] and _trusted(peer, proxies):
        last = forwarded[-1].rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer or "unknown"


def _trusted(peer: str, proxies: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted_networks(proxies))


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """A browser's Origin may open a socket when it is the gateway's own (its host and port are
    the request's Host), or listed in Settings.allowed_origins ("*" allows any). No Origin at
    all means a client that is not a browser: allowed (it could send any Origin it liked)."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    normalized = _normalize(origin)
    if normalized is None:
        return False  # "null" (a sandboxed page, a file) or garbage
    if normalized in {_normalize(item) for item in allowed}:
        return True
    parts = urlsplit(normalized)
    return host is not None and parts.netloc == _without_default_port(host.strip().lower(), parts.scheme)


def _without_default_port(host: str, scheme: str) -> str:
    """The Host header without the Origin's scheme's default port (which _normalize drops)."""
    suffix = {"http": ":80", "https": ":443"}[scheme]
    return host[: -len(suffix)] if host.endswith(suffix) else host


def _normalize(origin: str) -> str | None:
    try:
        parts = urlsplit(origin.strip().lower())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    try:
        port = parts.port
    except ValueError:
        return None
    netloc = parts.hostname if port in (None, default) else f"{parts.hostname}:{port}"
    if ":" in parts.hostname and not netloc.startswith("["):  # IPv6 literal
        netloc = f"[{parts.hostname}]" + ("" if port in (None, default) else f":{port}")
    return f"{parts.scheme}://{netloc}"
