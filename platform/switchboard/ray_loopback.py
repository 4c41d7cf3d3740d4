"""A local Ray that listens on loopback only.

Ray binds its servers (the GCS, the raylet, every worker's gRPC port, the client server, the
dashboard agent) on the node's IP address, and Ray 2.60 turns 127.0.0.1 into the machine's
routable address before it starts anything (services.resolve_ip_for_localhost), which with the
gRPC servers' wildcard binds leaves everything reachable from the network. With the address kept
as 127.0.0.1, Ray's own servers bind loopback (measured: every listening socket of a local run on
127.0.0.1; tests/integration/test_exposure.py checks it on every run).

`python -m switchboard.ray_loopback start --head ...` is `ray start` with that change: how
`switchboard up` starts its Ray head. init_ray applies it in-process for a new local Ray.
A multi-node cluster keeps Ray's behaviour: its nodes must reach each other.
"""

from __future__ import annotations

import sys

LOOPBACK = "127.0.0.1"


def keep_ray_on_loopback() -> None:
    """Make Ray keep a loopback node address as it is (for this process and what it starts)."""
    from ray._private import services

    if getattr(services.resolve_ip_for_localhost, "_switchboard", False):
        return
    original = services.resolve_ip_for_localhost

    def resolve(host: str) -> str:
        return host if host in (LOOPBACK, "localhost") else original(host)

    resolve._switchboard = True
    services.resolve_ip_for_localhost = resolve


def main() -> int:
    keep_ray_on_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv[0] = "ray"
    return ray_main()


if __name__ == "__main__":
    sys.exit(main())
