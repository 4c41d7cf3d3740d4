"""What a Settings value may hold: a range per numeric setting, bounds between settings, and
the shape of names, origins and networks. Settings.__post_init__ calls check(); a value outside
fails with one line naming its environment variable and what it may be."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .settings import Settings

# Region names become Ray custom resources (`region:<name>`), actor names and token claims.
REGION_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class SettingsError(ValueError):
    """A SWITCHBOARD_* variable holds a value that cannot be used."""


def variable_name(field_name: str) -> str:
    """The environment variable from_env reads a field from (and errors name)."""
    return "DATABASE_URL" if field_name == "database_url" else f"SWITCHBOARD_{field_name.upper()}"


def check(settings: Settings) -> None:
    _check_types(settings)
    _check_ranges(settings)
    _check_bounds(settings)
    _check_names(settings)


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
    # Each shard is an actor with its own database pool; a reshard may ask for no more either
    # (actors/resharding.py MAX_SHARDS_PER_REGION, which sizes the gateways' flat shard index).
    "shards_per_region": Range(1, 64),
    "min_replicas": COUNT,
    "max_replicas": COUNT,
    "sockets_per_replica": COUNT,
    "target_sockets_per_replica": COUNT,
    "upscale_delay_s": Range(0, 3600),
    "downscale_delay_s": Range(0, 86400),
    "http_slots_per_replica": COUNT,
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


def _shown(field_name: str, value: object) -> str:
    """A value of the wrong type as an error may show it: never the secret or the database URL
    (which may hold a password), only their type."""
    if field_name in ("jwt_secret", "database_url"):
        return f"<{type(value).__name__}>"
    return repr(value)


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
    _check_mirrors(settings)
    _check_region_urls(settings)
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


def _check_mirrors(settings: Settings) -> None:
    name = variable_name("region_mirrors")
    seen = set()
    for pair in settings.region_mirrors:
        region, equals, mirror = (part.strip() for part in pair.partition("="))
        if not equals or region not in settings.regions or mirror not in settings.regions or region == mirror:
            raise SettingsError(f"{name} holds {pair!r}: each entry must be region=mirror, two different regions "
                                f"of {variable_name('regions')}")
        if region in seen:
            raise SettingsError(f"{name} names a mirror for {region!r} twice")
        seen.add(region)


def _check_region_urls(settings: Settings) -> None:
    name = variable_name("region_urls")
    for pair in settings.region_urls:
        region, equals, url = (part.strip() for part in pair.partition("="))
        parts = urlsplit(url)
        if (not equals or region not in settings.regions or parts.scheme not in ("http", "https")
                or not parts.hostname or parts.query or parts.fragment or any(c.isspace() for c in url)):
            raise SettingsError(f"{name} holds {pair!r}: each entry must be region=http(s)://host[:port][/path], "
                                f"for a region of {variable_name('regions')}")


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
