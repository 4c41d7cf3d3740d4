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
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEV_JWT_SECRET = "switchboard-dev-secret-do-not-use-in-production"
# HS256 signs with the secret as the HMAC key: RFC 7518 (3.2) asks for at least 256 bits.
MIN_SECRET_BYTES = 32
# Region names become Ray custom resources (`region:<name>`), actor names and token claims.
REGION_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class SettingsError(ValueError):
    """A SWITCHBOARD_* variable holds a value that cannot be used."""


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
        _check_types(self)
        _check_ranges(self)
        _check_bounds(self)
        _check_names(self)

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


def variable_name(field_name: str) -> str:
    """The environment variable from_env reads a field from (and errors name)."""
    return "DATABASE_URL" if field_name == "database_url" else f"SWITCHBOARD_{field_name.upper()}"


# ---- ranges ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: from low (excluded when above) to high (None: no
    upper bound), and also 0 when off_allowed (0 meaning "off"). nan and inf are never in it."""
    low: float
    high: float | None = None
    above: bool = False
    off_allowed: bool = False

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.off_allowed and value == 0:
            return True
        if value < self.low or (self.above and value == self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        text = f"greater than {self.low}" if self.above else f"at least {self.low}"
        if self.high is not None:
            text += f" and at most {self.high}"
        return f"0 (off) or {text}" if self.off_allowed else text


# Rates: a rate of 0 would refuse everything forever (and divide by zero in the bucket); the
# ceiling only catches a typo, a million per second is no limit at all.
RATE = Range(0, 1_000_000, above=True)
# Counts, bursts and queue lengths: 0 would refuse everything.
COUNT = Range(1)
# A timeout a client or caller waits out: past five minutes it is no longer a timeout.
WAIT = Range(0, 300, above=True)

RANGES: dict[str, Range] = {
    "port": Range(1, 65535),
    # A big group commit must have time to finish; below 1 ms make_engine's whole milliseconds
    # would be 0, which PostgreSQL reads as "no timeout". An hour is no timeout any more either.
    "db_statement_timeout_s": Range(0.1, 3600),
    # Each shard is an actor with its own database pool; the ring is sized for at most this many.
    "shards_per_region": Range(1, 1024),
    "min_replicas": COUNT,
    "max_replicas": COUNT,
    "sockets_per_replica": COUNT,
    "target_sockets_per_replica": COUNT,
    "send_rate_per_s": RATE,
    "send_burst": COUNT,
    "frame_rate_per_s": RATE,
    "frame_burst": COUNT,
    "membership_rate_per_s": RATE,
    "membership_burst": COUNT,
    "http_rate_per_s": RATE,
    "http_burst": COUNT,
    "max_body_bytes": COUNT,
    # Every protocol frame (auth, a send of a short body) must fit; the server holds a whole frame
    # in memory and parses it, and it is the replica's WebSocket max_size too.
    "max_frame_bytes": Range(1024, 16 * 1024 * 1024),
    "max_auth_frame_bytes": Range(512),  # an auth frame with a real token is a few hundred bytes
    # 2: a frame is an object holding values (members: a list). Python's json recurses per level
    # and the interpreter stops near 1000.
    "max_json_depth": Range(2, 1000),
    "max_members": Range(2),  # a conversation needs two people
    "history_limit_max": Range(1, 10_000),  # one page is one query and one response held whole
    "conversation_page_max": Range(1, 10_000),
    "auth_timeout_s": WAIT,
    "flood_strikes": COUNT,
    "socket_outbox_bytes": Range(8 * 1024),  # see the bound against max_frame_bytes below
    "preauth_sockets_per_address": COUNT,
    "preauth_sockets_max": COUNT,
    "sockets_per_user": COUNT,
    "session_tasks_max": COUNT,
    "retention_days": COUNT,
    "retention_events": COUNT,
    "commit_batch_max": COUNT,
    "commit_events_max": COUNT,
    "shard_queue_max": COUNT,
    "gateway_queue_max": COUNT,
    "send_timeout_s": WAIT,
    # Under a second the checkpoints would be most of what the database does.
    "checkpoint_interval_s": Range(1, off_allowed=True),
}


@dataclasses.dataclass(frozen=True)
class Bound:
    """Setting `name` must be at most setting `other` (at_most), or at least `factor` times it."""
    name: str
    other: str
    at_most: bool = True
    factor: int = 1

    def admits(self, settings: Settings) -> bool:
        value, limit = getattr(settings, self.name), self.factor * getattr(settings, self.other)
        return value <= limit if self.at_most else value >= limit

    def describe(self, settings: Settings) -> str:
        other = f"{variable_name(self.other)}={getattr(settings, self.other)}"
        if self.at_most:
            return f"at most {other}"
        return f"at least {self.factor} times {other}, that is {self.factor * getattr(settings, self.other)}"


BOUNDS: tuple[Bound, ...] = (
    Bound("max_body_bytes", "max_frame_bytes"),  # a send frame carries the body and more
    Bound("max_auth_frame_bytes", "max_frame_bytes"),
    Bound("min_replicas", "max_replicas"),
    Bound("target_sockets_per_replica", "sockets_per_replica"),
    # A message event can be six times its body in JSON (\u escapes of control characters) plus
    # its envelope. An outbox that cannot hold one closes every reader sent such a message as too
    # slow, and again each time it resumes and is sent the same event.
    Bound("socket_outbox_bytes", "max_frame_bytes", at_most=False, factor=8),
)


def _check_types(settings: Settings) -> None:
    # Built in code, a "80" or a list would otherwise fail far from here (or break hashing).
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        kind = str(field.type)
        if not _is_of(value, kind):
            raise SettingsError(f"{variable_name(field.name)}={_shown(field.name, value)} is not a valid {kind}")


def _is_of(value: object, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind.startswith("tuple"):
        return isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    if kind == "str | None":
        return value is None or isinstance(value, str)
    return isinstance(value, str)


def _check_ranges(settings: Settings) -> None:
    for name, allowed in RANGES.items():
        value = getattr(settings, name)
        if allowed.admits(value):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{variable_name(name)}={value} is not a finite number: it must be {allowed.describe()}")
        raise SettingsError(f"{variable_name(name)}={value} is out of range: it must be {allowed.describe()}")


def _check_bounds(settings: Settings) -> None:
    for bound in BOUNDS:
        if not bound.admits(settings):
            raise SettingsError(f"{variable_name(bound.name)}={getattr(settings, bound.name)} is out of range: "
                                f"it must be {bound.describe(settings)}")


def _check_names(settings: Settings) -> None:
    for name in ("jwt_secret", "namespace"):
        if not getattr(settings, name):
            raise SettingsError(f"{variable_name(name)} is empty: it must be set")
    if not settings.regions:
        raise SettingsError(f"{variable_name('regions')} is empty: it must list at least one region")
    rule = f"it must match {REGION_NAME_RE.pattern}"
    if not REGION_NAME_RE.fullmatch(settings.region):
        raise SettingsError(f"{variable_name('region')}={settings.region!r} is not a region name: {rule}")
    for region in settings.regions:
        if not REGION_NAME_RE.fullmatch(region):
            raise SettingsError(f"{variable_name('regions')} holds {region!r}, which is not a region name: {rule}")
    for origin in settings.allowed_origins:
        if not _is_origin(origin):
            raise SettingsError(f"{variable_name('allowed_origins')} holds {origin!r}, which is not an origin: "
                                f"it must be * or scheme://host[:port] with scheme http or https and no path")
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(f"{variable_name('trusted_proxies')} holds {proxy!r}, which is not a network: "
                                f"it must be an address or CIDR network such as 10.0.0.0/8") from None


def _is_origin(origin: str) -> bool:
    """`*`, or what a browser sends as Origin: scheme://host[:port] and nothing else."""
    if origin == "*":
        return True
    if any(character.isspace() for character in origin):
        return False
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 -- raises on a port that is not a number in 0-65535
    except ValueError:
        return False
    return (parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc
            and not (parts.path or parts.query or parts.fragment or origin.endswith(("?", "#"))))


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


def _shown(field_name: str, value: object) -> str:
    """A value as an error message may show it: never the secret or a database password."""
    if field_name == "jwt_secret":
        return f"<{type(value).__name__}>"
    if field_name == "database_url" and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value)


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
