"""Settings, read once from the environment, typed and frozen.

Actors and deployments receive a Settings object through their constructor; nothing below the
edges reads the environment itself (see docs/ARCHITECTURE.md, "Settings").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

DEV_JWT_SECRET = "switchboard-dev-secret-do-not-use-in-production"


class SettingsError(ValueError):
    """A SWITCHBOARD_* variable holds a value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # Identity and the public port.
    jwt_secret: str = DEV_JWT_SECRET
    host: str = "127.0.0.1"
    port: int = 8000
    dev_mode: bool = False

    # Storage. None means "start the embedded PostgreSQL under data_dir".
    database_url: str | None = None
    data_dir: str = str(Path.home() / ".switchboard")

    # Topology. Regions are Ray custom resources `region:<name>` on multi-node clusters.
    region: str = "local"
    regions: tuple[str, ...] = ("local",)
    namespace: str = "switchboard"
    # Mailbox-shard actors per region. One per two cores or so: on the 2-core reference machine
    # one shard beats two (no cross-shard delivery hop, larger group commits, one process fewer
    # competing for the CPU; see the README's benchmark figures). Raise it as nodes are added.
    shards_per_region: int = 1

    # Ingress. One WebSocket holds one Serve request slot for its whole life, so the slot count
    # is the number of sockets a replica may hold, not a request concurrency.
    # Clients reach the replica's own HTTP server through HAProxy instead of crossing the Serve
    # proxy actor by RPC on every frame (DESIGN.md measured 5x). Experimental in Ray: off falls
    # back to the default proxy path, which must keep working.
    direct_ingress: bool = True
    min_replicas: int = 1
    max_replicas: int = 2
    sockets_per_replica: int = 2000
    target_sockets_per_replica: int = 1000
    # A Ray custom resource the gateway replicas need ("" for none): keeps them on the nodes that
    # have it, e.g. the nodes that take client traffic, away from the shards' nodes.
    gateway_node_resource: str = ""

    # Client limits (PROTOCOL.md "Default limits").
    send_rate_per_s: float = 50.0
    send_burst: int = 100
    max_body_bytes: int = 16 * 1024
    max_frame_bytes: int = 64 * 1024
    max_members: int = 10_000
    history_limit_max: int = 200
    auth_timeout_s: float = 10.0
    # Refused sends a connection may pile up past its bucket before it is closed with 4008.
    flood_strikes: int = 200

    # Mailbox retention: events are kept at least this long AND at least this many per user.
    retention_days: int = 7
    retention_events: int = 10_000

    # Group commit. A batch closes when it holds commit_batch_max operations, or when the previous
    # commit finishes (so a lone send never waits for a timer).
    commit_batch_max: int = 512
    # Operations queued on one shard beyond this are refused `overloaded` instead of queued.
    shard_queue_max: int = 20_000
    # How long a send may wait for its commit before the client is told `overloaded`.
    send_timeout_s: float = 5.0
    # Shards and routers write their state to PostgreSQL this often (and on drain); a restart loads
    # it and replays only what changed after it. 0 turns the periodic checkpoint off.
    checkpoint_interval_s: float = 30.0

    @property
    def is_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = "DATABASE_URL" if field.name == "database_url" else f"SWITCHBOARD_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, field.type)
        settings = cls(**values)
        if settings.region not in settings.regions:
            settings = settings.replace(regions=settings.regions + (settings.region,))
        return settings


def _parse(name: str, raw: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from exc
