"""The `switchboard` command: up, down, status, token, migrate (scale: scale_command.py; send, tail,
demo: client_commands.py).

`up` leaves a Ray head, the embedded PostgreSQL (unless DATABASE_URL is set) and the Serve app
running after the command exits, and records what it started in <data_dir>/state.json. `down`
reads that record and stops exactly those things: a Ray cluster that was already running before
`up` (a `ray up` cluster, another session's) is left running, only the platform is removed from it.

Ray and the platform modules are imported inside the commands that need them, so `token` answers
at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from switchboard import ray_head
from switchboard.addresses import http_url, region_http_url, region_ws_url, ws_url
from switchboard.auth import DEFAULT_TOKEN_TTL_S
from switchboard.client_commands import add_client_commands
from switchboard.scale_command import add_scale_command
from switchboard.settings import Settings, SettingsError, redact_url, unknown_variables
from switchboard.state_file import clear_state, read_state, settings_from_state, state_path, write_state

HEALTH_TIMEOUT_S = 3
STATS_TIMEOUT_S = 10


class CliError(Exception):
    """A command cannot go on; main() prints the message and exits 1."""


# ---- up ----------------------------------------------------------------------------------------------

def warn_if_dev_secret(settings: Settings) -> None:
    if settings.is_dev_secret:
        bar = "!" * 78
        print(f"{bar}\n! SWITCHBOARD_JWT_SECRET is not set: tokens are signed with the public development\n"
              f"! secret, so anyone can mint one. Set a long random SWITCHBOARD_JWT_SECRET outside\n"
              f"! of local development.\n{bar}", file=sys.stderr, flush=True)


def initial_state(settings: Settings, ray_owner: str | None) -> dict:
    """What `down` needs, written before anything but Ray is started so a failed `up` is undone too.
    ray_owner: the mark of the Ray head `up` started (ray_head.py), None if Ray was running."""
    return {
        "ray_started": ray_owner is not None,
        "ray_owner": ray_owner,
        "embedded_postgres": not settings.database_url,
        "database_url": None,
        "host": settings.host,
        "port": settings.port,
        "namespace": settings.namespace,
        "regions": list(settings.regions),
        "shards_per_region": settings.shards_per_region,
        "http_url": http_url(settings),
        "ws_url": ws_url(settings),
        "dashboard_url": ray_head.DEFAULT_DASHBOARD_URL,
        "started_at": time.time(),
    }


def bring_up(settings: Settings) -> int:
    from switchboard import local

    settings.check_exposure()  # before anything starts: nothing to undo
    previous = read_state(settings) or {}
    owner = None
    if ray_head.running_gcs() is None:
        try:
            owner = ray_head.start(settings)
        except ray_head.RayHeadError as error:
            raise CliError(str(error)) from error
    else:
        print("switchboard: using the Ray cluster already running (its processes keep the "
              "environment they started with)", file=sys.stderr, flush=True)
    # Another `up` from this data_dir may have started the head; keep its claim so `down` stops it.
    state = initial_state(settings, ray_owner=owner or previous.get("ray_owner"))
    write_state(settings, state)

    if not ray_head.connect(settings):
        raise CliError("cannot connect to the Ray cluster at address 'auto' (is RAY_ADDRESS right?)")
    state["dashboard_url"] = ray_head.dashboard_url()
    try:
        platform = local.start_platform(settings, ray_address="auto", keep_postgres=True)
    except Exception as error:
        raise CliError(f"the platform did not start: {error}\n"
                       f"switchboard: `switchboard down` (same environment) removes what was started") from error
    state["database_url"] = redact_url(platform.database_url)
    state["embedded_postgres"] = platform.embedded_postgres
    write_state(settings, state)
    print_up_banner(settings, state)
    return 0


def region_lines(settings: Settings) -> str:
    """Each region's own entry point, when there are several (gateway/entry_points.py)."""
    if len(settings.regions) < 2:
        return ""
    return "".join(f"\n  Region {region:<7} {region_http_url(settings, region)}   "
                   f"(WebSocket {region_ws_url(settings, region)})" for region in settings.regions)


def print_up_banner(settings: Settings, state: dict) -> None:
    database = (f"embedded PostgreSQL under {Path(settings.data_dir).expanduser()}"
                if state["embedded_postgres"] else f"DATABASE_URL {state['database_url']}")
    print(f"""Switchboard is up.
  HTTP API       {state['http_url']}/v1   (GET {state['http_url']}/v1/health)
  WebSocket      {state['ws_url']}{region_lines(settings)}
  Ray dashboard  {state['dashboard_url']}
  Database       {database}
  State file     {state_path(settings)}
Mint a development token (same environment, so the same SWITCHBOARD_JWT_SECRET):
  switchboard token alice
  curl -H "Authorization: Bearer $(switchboard token alice)" {state['http_url']}/v1/conversations
Check it with `switchboard status`; stop everything with `switchboard down`.""", flush=True)


def wait_for_signal() -> None:
    """Block until Ctrl-C, SIGTERM or SIGHUP. A second Ctrl-C during shutdown interrupts it."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    while not stop.wait(1.0):
        pass
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    for line in unknown_variables():
        print(f"switchboard up: warning: {line}", file=sys.stderr)
    warn_if_dev_secret(settings)
    if not args.foreground:
        return bring_up(settings)
    code = 1
    try:
        code = bring_up(settings)
        print("Running in the foreground: Ctrl-C stops everything it started.", flush=True)
        wait_for_signal()
    except KeyboardInterrupt:
        code = 130
    except CliError as error:
        print(f"switchboard up: {error}", file=sys.stderr)
    finally:  # whatever happened, leave nothing running
        print("switchboard: stopping ...", file=sys.stderr, flush=True)
        shut_down(settings)
    return code


# ---- down ------------------------------------------------------------------------------------------

def shut_down(settings: Settings) -> None:
    """Stop what the state file says `up` started; without one, only the embedded PostgreSQL under
    data_dir (which is this data_dir's by definition) is stopped."""
    from switchboard.local import stop_database, stop_platform

    state = read_state(settings)
    settings = settings_from_state(settings, state)
    if state is None:
        print(f"switchboard down: no platform recorded in {state_path(settings)}", file=sys.stderr)
    elif ray_head.connect(settings):
        try:
            stop_platform(settings)
        except Exception as error:  # Ray and PostgreSQL must still be stopped
            print(f"switchboard down: removing the platform from Ray failed: {error}", file=sys.stderr)
    ray_head.disconnect()
    if state and state.get("ray_owner"):
        stopped = ray_head.stop(state["ray_owner"])
        print(f"switchboard down: the Ray head `up` started is stopped ({stopped} processes)", file=sys.stderr)
    elif state and state.get("ray_started"):
        print("switchboard down: this Ray head was started by an older `switchboard up` that did not mark "
              "its processes; stop it with `ray stop` if nothing else uses Ray here", file=sys.stderr)
    elif state:
        print("switchboard down: Ray was running before `switchboard up`; left running", file=sys.stderr)
    if (state is None or state.get("embedded_postgres")) and stop_database(settings):
        print("switchboard down: embedded PostgreSQL stopped", file=sys.stderr)
    clear_state(settings)


def cmd_down(_: argparse.Namespace) -> int:
    shut_down(Settings.from_env())
    print("Switchboard is down.")
    return 0


# ---- status ----------------------------------------------------------------------------------------

def health(url: str) -> str:
    """"ok", or what went wrong."""
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=HEALTH_TIMEOUT_S) as response:
            body = json.loads(response.read() or b"{}")
            return "ok" if response.status == 200 and body.get("status") == "ok" else f"answered {body}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except Exception as error:
        return f"unreachable ({error})"


def shard_stats(settings: Settings) -> list[dict]:
    """One row per shard of every region, from each region router's `stats`."""
    import ray

    from switchboard.actors import registry

    rows = []
    for region in settings.regions:
        router = registry.get_actor(settings, registry.router_name(region))
        for shard in ray.get(router.stats.remote(), timeout=STATS_TIMEOUT_S):
            rows.append({"region": region, **shard})
    return rows


def format_table(rows: list[dict]) -> str:
    now = time.time()
    rows = [{**{k: v for k, v in row.items() if k != "started_at"},
             "up_s": round(now - row["started_at"]) if "started_at" in row else "-"} for row in rows]
    headers = list(rows[0])
    cells = [[str(row.get(header, "")) for header in headers] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, header in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def cmd_status(_: argparse.Namespace) -> int:
    settings = Settings.from_env()
    state = read_state(settings)
    settings = settings_from_state(settings, state)
    ray_up = ray_head.connect(settings)
    print(f"ray       {'up, dashboard ' + ray_head.dashboard_url() if ray_up else 'not running'}")
    answer = health(http_url(settings))
    print(f"health    {http_url(settings)}/v1/health: {answer}")
    if len(settings.regions) > 1:
        for region in settings.regions:
            print(f"  {region:<7} {region_http_url(settings, region)}/v1/health: {health(region_http_url(settings, region))}")
    if state:
        kind = "embedded PostgreSQL" if state.get("embedded_postgres") else "DATABASE_URL"
        print(f"database  {kind} {state.get('database_url') or '(not started)'}")
    stats_ok = False
    if ray_up:
        try:
            rows = shard_stats(settings)
            print(format_table(rows) if rows else "no shards")
            stats_ok = bool(rows)
        except Exception as error:
            print(f"shards    no answer from the region routers: {error}")
    healthy = ray_up and answer == "ok" and stats_ok
    print("healthy" if healthy else "NOT healthy")
    return 0 if healthy else 1


# ---- token, migrate --------------------------------------------------------------------------------

def cmd_token(args: argparse.Namespace) -> int:
    from switchboard.auth import mint_token
    from switchboard.errors import SwitchboardError

    settings = Settings.from_env()
    if args.region and args.region not in settings.regions:
        print(f"switchboard token: unknown region {args.region!r} (regions: {', '.join(settings.regions)})",
              file=sys.stderr)
        return 2
    try:
        print(mint_token(settings.jwt_secret, args.user, region=args.region, ttl_s=args.ttl))
    except SwitchboardError as error:
        print(f"switchboard token: {error.message}", file=sys.stderr)
        return 2
    return 0


def embedded_postgres_running(settings: Settings) -> bool:
    # The pgdata location of storage/database.py's start_embedded_postgres.
    pgdata = Path(settings.data_dir).expanduser().resolve() / "pgdata"
    return (pgdata / "postmaster.pid").exists()


def cmd_migrate(_: argparse.Namespace) -> int:
    from switchboard.local import prepare_database, resolve_database, stop_database

    settings = Settings.from_env()
    # A handle that stops the server at exit would also stop one a running platform uses; so keep
    # it running, and stop it afterwards only if this command started it.
    was_running = bool(settings.database_url) or embedded_postgres_running(settings)
    database_url, embedded = resolve_database(settings, keep_running=True)
    try:
        prepare_database(database_url)
    finally:
        if embedded and not was_running:
            stop_database(settings)
    print(f"migrated {redact_url(database_url)} to the newest revision")
    return 0


# ---- entry point -----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="switchboard", description="Run and operate a Switchboard platform.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start Ray, PostgreSQL and the platform; print the URLs")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C runs `down`")
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop everything `up` started").set_defaults(run=cmd_down)
    commands.add_parser("status", help="Ray, health and shard stats; exit 0 if healthy").set_defaults(run=cmd_status)

    token = commands.add_parser("token", help="print a development access token for USER")
    token.add_argument("user")
    token.add_argument("--region", help="the user's home region (default: the platform's default)")
    token.add_argument("--ttl", type=positive_int, default=DEFAULT_TOKEN_TTL_S, metavar="SECONDS",
                       help=f"lifetime in seconds (default {DEFAULT_TOKEN_TTL_S})")
    token.set_defaults(run=cmd_token)
    commands.add_parser("migrate", help="apply the database migrations").set_defaults(run=cmd_migrate)
    add_scale_command(commands)  # scale_command.py
    add_client_commands(commands)  # send, tail, demo: client_commands.py
    return top


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The embedded PostgreSQL falls back to /tmp for its lock file when there is no login session.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        return args.run(args)
    except (CliError, SettingsError) as error:
        print(f"switchboard {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
