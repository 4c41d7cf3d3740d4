"""Settings, read once from the environment, typed, checked and frozen.

Actors and deployments receive a Settings object through their constructor; nothing below the
edges reads the environment itself (see docs/ARCHITECTURE.md, "Settings").

Every value is checked when the object is built (from the environment or in code), so a bad one
fails at `switchboard up` with one line naming its variable, not later inside a shard or gateway
replica that cannot say where the value came from. Whether the settings are safe to serve other
machines with is a separate question (exposure_problems): a development setup is valid too.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .settings_checks import RANGES, SettingsError, check, variable_name

__all__ = ["DEV_JWT_SECRET", "RANGES", "Settings", "SettingsError", "redact_url", "unknown_variables",
           "variable_name"]

DEV_JWT_SECRET = "switchboard-dev-secret-do-not-use-in-production"
# HS256 signs with the secret as the HMAC key: RFC 7518 (3.2) asks for at least 256 bits.
MIN_SECRET_BYTES = 32


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    # Identity and the public port.
    jwt_secret: str = DEV_JWT_SECRET
    host: str = "127.0.0.1"
    port: int = 8000
    dev_mode: bool = False

    # Who may reach the gateway.
    # Browser origins besides the gateway's own that may open sockets and call the API ("*": any).
    allowed_origins: tuple[str, ...] = ()
    # Peers whose X-Forwarded-For is believed: the node-local HAProxy in front of direct ingress.
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    # Storage. None means "start the embedded PostgreSQL under data_dir".
    database_url: str | None = None
    data_dir: str = str(Path.home() / ".switchboard")
    # statement_timeout of every platform connection: a database that takes a query and never
    # answers (a held lock, a stuck disk) fails that batch instead of stalling its shard.
    db_statement_timeout_s: float = 5.0

    # Topology. On a multi-node cluster a region is the nodes labelled `region=<name>` (`ray start
    # --labels region=eu`); its router and shards run there. `region` is the default region (of
    # tokens without a claim). The head carries no region: it holds what must not move (Serve's
    # controller, the GCS), and no region's loss takes it.
    region: str = "local"
    regions: tuple[str, ...] = ("local",)
    # Each region's mirror as `eu=us,us=ap`: when every node of a region is lost, its actors
    # restart on its mirror's nodes. A region not listed is mirrored by the next one in `regions`
    # (the last by the first); a lone region has none.
    region_mirrors: tuple[str, ...] = ()
    # Each region's public gateway URL as `eu=https://eu.chat.example.com,...`, for clients and
    # the web page's failover list (GET /v1/gateways). A region not listed is reached at its path
    # on the host the client uses: `/regions/<region>` (docs/ARCHITECTURE.md "Gateway entry points").
    region_urls: tuple[str, ...] = ()
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
    # A laptop-sized machine (4-8 cores, 8-16 GB) runs 4 replicas of 4,000 sockets each (about
    # 0.3 GB apiece when full); the autoscaler adds one when they average half full, so a replica
    # is ready before the others fill (benchmarks/capacity.py measured the figures in the README).
    max_replicas: int = 4
    sockets_per_replica: int = 4000
    target_sockets_per_replica: int = 2000
    # Seconds the autoscaler waits before adding replicas (Serve's default is 30 s, far too slow
    # for a crowd arriving) and before removing them.
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 600.0
    # Request slots of a replica that sockets can never take: past sockets_per_replica a new
    # socket is closed 1013 at once, so HTTP calls always find a slot however many sockets are
    # open (before, sockets could fill every slot and HTTP queued until it timed out).
    http_slots_per_replica: int = 200
    # A Ray custom resource the gateway replicas need ("" for none): keeps them on the nodes that
    # have it, e.g. the nodes that take client traffic, away from the shards' nodes.
    gateway_node_resource: str = ""

    # Client limits (PROTOCOL.md "Default limits").
    send_rate_per_s: float = 50.0
    send_burst: int = 100
    # Every frame a client sends counts against this per-connection budget, sends included.
    frame_rate_per_s: float = 100.0
    frame_burst: int = 200
    # Conversation creations and membership changes per user: each one rewrites member lists.
    membership_rate_per_s: float = 2.0
    membership_burst: int = 20
    # Authenticated HTTP calls per user.
    http_rate_per_s: float = 50.0
    http_burst: int = 100
    max_body_bytes: int = 16 * 1024
    max_frame_bytes: int = 64 * 1024
    # The first frame (auth) comes from a client nobody knows yet: its own, smaller limit.
    max_auth_frame_bytes: int = 8192
    # Deepest JSON nesting accepted in a frame or body: parsing deeper costs stack, not bytes.
    max_json_depth: int = 32
    max_members: int = 10_000
    history_limit_max: int = 200
    # The largest `limit` of one conversation-list page.
    conversation_page_max: int = 200
    auth_timeout_s: float = 10.0
    # Refused sends a connection may pile up past its bucket before it is closed with 4008.
    flood_strikes: int = 200

    # What one client may hold on a gateway replica.
    # Output waiting for one socket before its slow reader is closed 4009.
    socket_outbox_bytes: int = 4 * 1024 * 1024
    # Sockets not yet authenticated, per client address and in all (per gateway replica).
    preauth_sockets_per_address: int = 32
    preauth_sockets_max: int = 1000
    # Open sockets one user may hold.
    sockets_per_user: int = 20
    # Background tasks (reads, typing) one connection may have in flight.
    session_tasks_max: int = 32

    # Mailbox retention: events are kept at least this long AND at least this many per user.
    retention_days: int = 7
    retention_events: int = 10_000

    # Group commit. A batch closes when it holds commit_batch_max operations, or when the previous
    # commit finishes (so a lone send never waits for a timer).
    commit_batch_max: int = 512
    # Mailbox events in one commit transaction: a batch closes when the next operation would pass
    # it (one operation always fits), so a large conversation's fan-out cannot make it huge.
    commit_events_max: int = 50_000
    # Operations queued on one shard beyond this are refused `overloaded` instead of queued.
    shard_queue_max: int = 20_000
    # Operations a gateway replica may queue for one shard before it sheds them `overloaded`.
    gateway_queue_max: int = 10_000
    # How long a send may wait for its commit before the client is told `overloaded`.
    send_timeout_s: float = 5.0
    # Shards and routers write their state to PostgreSQL this often (and on drain); a restart loads
    # it and replays only what changed after it. 0 turns the periodic checkpoint off.
    checkpoint_interval_s: float = 30.0

    def __post_init__(self) -> None:
        check(self)

    def mirror_of(self, region: str) -> str | None:
        """The region whose nodes take over `region`'s actors when its own nodes are all lost."""
        mirror = region_pairs(self.region_mirrors).get(region)
        if mirror is not None:
            return mirror
        if len(self.regions) < 2 or region not in self.regions:
            return None
        return self.regions[(self.regions.index(region) + 1) % len(self.regions)]

    @property
    def is_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @property
    def is_loopback_host(self) -> bool:
        """Whether the gateway listens on this machine only. The wildcards (0.0.0.0, ::, "")
        listen on every interface, so they are not."""
        return _is_loopback(self.host)

    def exposure_problems(self) -> list[str]:
        """What makes these settings unsafe to serve other machines with (nothing if the host is
        loopback): each one lets anyone who can reach the port sign in as anyone."""
        if self.is_loopback_host:
            return []
        serving = f"{variable_name('host')}={_plain(self.host)} serves other machines, but"
        secret = variable_name("jwt_secret")
        problems = []
        if self.is_dev_secret:
            problems.append(f"{serving} {secret} is the public development default: "
                            f"set a random secret of at least {MIN_SECRET_BYTES} bytes")
        elif _byte_length(self.jwt_secret) < MIN_SECRET_BYTES:
            problems.append(f"{serving} {secret} is only {_byte_length(self.jwt_secret)} bytes: "
                            f"set a random secret of at least {MIN_SECRET_BYTES} bytes")
        if self.dev_mode:
            problems.append(f"{serving} {variable_name('dev_mode')} is on, which lets anyone mint a token "
                            f"for any user: turn it off")
        return problems

    def check_exposure(self) -> None:
        """Raise SettingsError with the first exposure problem (called where the gateway starts,
        not at construction: a development setup on loopback is valid)."""
        problems = self.exposure_problems()
        if problems:
            raise SettingsError(problems[0])

    def __repr__(self) -> str:
        # Settings reach logs, tracebacks and Ray's actor listings: the secret and the database
        # password never do (pickling, which is how actors get them, still carries them).
        shown = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        shown["jwt_secret"] = _secret_summary(self.jwt_secret)
        if self.database_url is not None:
            shown["database_url"] = redact_url(self.database_url)
        return f"{type(self).__name__}(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = variable_name(field.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, field.type)
        regions = values.get("regions", cls.regions)
        region = values.get("region", cls.region)
        if region not in regions:
            values["regions"] = tuple(regions) + (region,)
        return cls(**values)


def region_pairs(entries: tuple[str, ...]) -> dict[str, str]:
    """`region=value` entries (SWITCHBOARD_REGION_MIRRORS, _REGION_URLS) as a dict, both sides
    stripped (settings_checks.py has refused malformed ones)."""
    pairs = {}
    for entry in entries:
        region, _, value = entry.partition("=")
        pairs[region.strip()] = value.strip()
    return pairs


# ---- unknown variables --------------------------------------------------------------------------

# SWITCHBOARD_* variables read by other parts than Settings: the HAProxy wrapper's bind address, the
# mark on the processes `up` starts, the test suite's screenshot switch and the benchmark relay.
OTHER_VARIABLES = frozenset({"SWITCHBOARD_HAPROXY_BIND", "SWITCHBOARD_RAY_OWNER", "SWITCHBOARD_WEB_SCREENSHOT",
                             "SWITCHBOARD_BENCH_RELAY_SECRET"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per SWITCHBOARD_* variable nothing reads, naming the nearest real one. A typo
    (SWITCHBOARD_SHARDS for SWITCHBOARD_SHARDS_PER_REGION) would otherwise leave its setting at the
    default without a word; `up` prints these as warnings."""
    env = os.environ if environ is None else environ
    known = {variable_name(field.name) for field in dataclasses.fields(Settings)} | OTHER_VARIABLES
    lines = []
    for name in sorted(env):
        if not name.startswith("SWITCHBOARD_") or name in known:
            continue
        nearest = _nearest(name, known)
        hint = f"; did you mean {nearest}?" if nearest else ""
        lines.append(f"{name} is not a Switchboard setting and is ignored{hint}")
    return lines


def _nearest(name: str, known: set[str]) -> str | None:
    # A shortened name (SWITCHBOARD_SHARDS) is the likeliest slip, then a misspelt one.
    extended = sorted((other for other in known if other.startswith(name)), key=len)
    if extended:
        return extended[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return close[0] if close else None


# ---- parsing -----------------------------------------------------------------------------------

def _parse(name: str, raw: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        value = _convert(raw, kind)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is not a finite number: nan and infinity are not allowed")
    return value


def _convert(raw: str, kind: str) -> object:
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


# ---- showing -----------------------------------------------------------------------------------

def redact_url(url: str) -> str:
    """The URL with its password (in the userinfo or a password= parameter) replaced by ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<not a URL: hidden>"
    if password:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostport}")
    shown = urlunsplit(parts) if password else url
    # password=, sslpassword=, in a query or a key=value connection string; quoted or not.
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", r"\1***", shown)


def _secret_summary(secret: str) -> str:
    if secret == DEV_JWT_SECRET:
        return "<development default>"
    return f"<set, {_byte_length(secret)} bytes>"


def _plain(text: str) -> str:
    # Kept bare when that is unambiguous, as the operator typed it; quoted otherwise (an empty
    # host, a space or a newline must not hide in or break the one-line message).
    return text if text and text.isprintable() and " " not in text else repr(text)


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _is_loopback(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a host name: it may resolve to any interface
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
