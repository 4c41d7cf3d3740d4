"""Two things Ray Serve 2.60 gives no setting for, done in the replica process before Serve starts
its servers there (the Gateway's constructor runs first, see replica.py `_on_initialized`):

- The replica's own HTTP server (direct ingress) is uvicorn with its default WebSocket max size,
  16 MiB: a client could make it assemble a 16 MiB frame before our check. It gets the platform's
  frame limit instead, so an oversized frame is refused (1009) as it arrives.
- The replica's inter-deployment gRPC server binds every interface ("[::]:0"). On a node whose Ray
  runs on loopback only (a local run: the platform's Ray listens on nothing else), it binds
  loopback too. It asks for Ray's token when token auth is on, but an open port is still an
  open port.

The replica's uvicorn servers are kept (SERVERS) so that a socket can be aborted (`transport_of`):
ASGI has no abort, and a client that reads nothing leaves even the close frame unwritten.

Both wrap a function the replica module imported by name; if a Ray upgrade renames one, the
wrapper is skipped with a warning and tests/integration/test_exposure.py (listening sockets) or
the frame-limit tests say so.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
# The uvicorn servers started in this process (the replica's direct-ingress HTTP server).
SERVERS: list = []


def apply(max_frame_bytes: int, node_ip: str | None) -> None:
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    _limit_websocket_frames(replica, max_frame_bytes)
    if node_ip in LOOPBACK:
        _keep_grpc_on_loopback(replica)


def _limit_websocket_frames(replica, max_frame_bytes: int) -> None:
    start = getattr(replica, "start_asgi_http_server", None)
    if start is None or getattr(start, "_switchboard", False):
        if start is None:
            log.warning("Serve has no start_asgi_http_server: the WebSocket max size stays uvicorn's")
        return

    async def start_with_frame_limit(*args, **kwargs):
        task, server = await start(*args, **kwargs)
        server.config.ws_max_size = max_frame_bytes  # read by each new connection's protocol
        SERVERS.append(server)
        return task, server

    start_with_frame_limit._switchboard = True
    replica.start_asgi_http_server = start_with_frame_limit


def _keep_grpc_on_loopback(replica) -> None:
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "_switchboard", False):
        if add_port is None:
            log.warning("Serve has no add_port_to_grpc_server: the replica's gRPC port stays on every interface")
        return

    def add_loopback_port(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address[len("[::]:"):]
        return add_port(server, address)

    add_loopback_port._switchboard = True
    replica.add_port_to_grpc_server = add_loopback_port


def transport_of(scope: dict):
    """The transport of this process's uvicorn WebSocket connection whose handshake `scope` is,
    or None. Matched by the handshake's Sec-WebSocket-Key (random per connection): the scope's
    client address is rewritten from X-Forwarded-For on the way, the key is not."""
    key = _websocket_key(scope)
    if key is None:
        return None
    for server in SERVERS:
        for connection in getattr(getattr(server, "server_state", None), "connections", ()):
            connection_scope = getattr(connection, "scope", None)
            if connection_scope is scope or (isinstance(connection_scope, dict) and _websocket_key(connection_scope) == key):
                return getattr(connection, "transport", None)
    return None


def _websocket_key(scope: dict) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"sec-websocket-key":
            return value
    return None
