"""Private Serve ports for a platform that shares its machine with others (tests, chaos runs).

Serve's HAProxy binds fixed stats (8404) and metrics (9101) ports, sends requests no replica can
take (one was just killed) to a fallback proxy on a fixed port (8500), and direct-ingress
replicas take ports from one range (30000-31000) that every Ray on the machine shares. Another
platform on the machine (a developer's `scripts/run`, another test run) may hold them: then
HAProxy fails to start or, worse, our clients reach a stranger's platform through its fallback
proxy (seen in the chaos run: 4001 "Signature verification failed" right after a gateway kill).
A production node runs one platform and keeps Serve's defaults.
"""

from __future__ import annotations

import random
import socket

# Replica ports come from a window of this many ports, below Linux's ephemeral range
# (32768-60999) so that no outgoing connection is handed one meanwhile.
PORT_WINDOW = 50
PORT_WINDOWS_FROM, PORT_WINDOWS_TO = 20_000, 29_950
SINGLE_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                         "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def private_serve_ports() -> dict[str, str]:
    """Environment for Ray's processes (set before Ray starts) giving Serve ports nobody holds."""
    environment = {variable: str(free_port()) for variable in SINGLE_PORT_VARIABLES}
    http_base, grpc_base = free_window(), free_window()
    environment.update({
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_base + PORT_WINDOW - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_base + PORT_WINDOW - 1),
    })
    return environment


# Single ports (a platform's HTTP port, HAProxy's stats port...) come from here: below Linux's
# ephemeral range too, and above both Serve's default replica range (30000-31000) and Ray's
# worker ports (10002-19999). A port the kernel hands out for bind(0) is in the ephemeral range,
# which every Ray process binding port 0 draws from between our pick and our bind: the chaos
# run's HAProxy once found its HTTP port taken ("cannot bind socket (Address already in use)").
SINGLE_PORTS_FROM, SINGLE_PORTS_TO = 31_001, 32_700


def free_port() -> int:
    """A port nothing listens on now, from SINGLE_PORTS_FROM-SINGLE_PORTS_TO."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(SINGLE_PORTS_FROM, SINGLE_PORTS_TO)
        if _port_free(port):
            return port
    raise RuntimeError("no free port for the platform")


def free_window() -> int:
    """The first port of PORT_WINDOW consecutive ports that nothing on this machine listens on."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_WINDOWS_FROM, PORT_WINDOWS_TO, PORT_WINDOW)
        if all(_port_free(port) for port in range(base, base + PORT_WINDOW)):
            return base
    raise RuntimeError("no free window of ports for the Serve replicas")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
