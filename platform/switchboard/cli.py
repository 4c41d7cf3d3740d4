"""The `switchboard` command: up, down, status, token, migrate (and send, tail, demo: client_commands.py).

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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from switchboard.auth import DEFAULT_TOKEN_TTL_S
from switchboard.client_commands import add_client_commands
from switchboard.settings import Settings, SettingsError

STATE_FILE = "state.json"
RAY_HEAD_PORT = 6379
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8265"
HEALTH_TIMEOUT_S = 3
STATS_TIMEOUT_S = 10
GCS_PROBE_TIMEOUT_S = 2
# `ray start` normally takes ~5 s here; allow for a slow first start (dashboard, log dirs).
RAY_START_TIMEOUT_S = 120

class CliError(Exception):
    """A command cannot go on; main() prints the message and exits 1."""


# ---- the state file --------------------------------------------------------------------------------

def state_path(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / STATE_FILE


def read_state(settings: Settings) -> dict | None:
    try:
        return json.loads(state_path(settings).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        print(f"switchboard: ignoring unreadable {state_path(settings)}", file=sys.stderr)
        return None


def write_state(settings: Settings, state: dict) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)  # atomic: `down` never reads half a file


def clear_state(settings: Settings) -> None:
    state_path(settings).unlink(missing_ok=True)


def settings_from_state(settings: Settings, state: dict | None) -> Settings:
    """The settings `up` ran with, for what decides names and addresses: `down` must remove the
    actors `up` created even if this shell's environment differs."""
    if not state:
        return settings
    return settings.replace(
        host=state.get("host", settings.host),
        port=int(state.get("port", settings.port)),
        namespace=state.get("namespace", settings.namespace),
        regions=tuple(state.get("regions", settings.regions)),
        shards_per_region=int(state.get("shards_per_region", settings.shards_per_region)),
    )


def redacted(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


# ---- addresses -------------------------------------------------------------------------------------

def local_host(settings: Settings) -> str:
    """Where to reach the Serve port from this machine (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host


def http_url(settings: Settings) -> str:
    return f"http://{local_host(settings)}:{settings.port}"


def ws_url(settings: Settings) -> str:
    return f"ws://{local_host(settings)}:{settings.port}/v1/ws"


# ---- Ray -------------------------------------------------------------------------------------------

def ray_executable() -> str:
    """The `ray` next to this interpreter, so a venv works without being activated."""
    sibling = Path(sys.executable).parent / "ray"
    return str(sibling) if sibling.exists() else "ray"


def local_ray_running() -> bool:
    """RAY_ADDRESS names a cluster, or a raylet on this machine points at a GCS that accepts
    connections: then "auto" has something to connect to.

    Checked before ray.init because ray.init on a half-dead cluster waits a minute for the GCS
    and then aborts the whole process, which would cut `down` short before it stops anything.
    """
    if os.environ.get("RAY_ADDRESS"):
        return True
    from ray._private.services import find_gcs_addresses

    return any(accepts_connections(address) for address in find_gcs_addresses())


def accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=GCS_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def connect_ray(settings: Settings) -> bool:
    """Connect this process to the running Ray cluster; False if there is none."""
    import ray

    from switchboard.local import init_ray

    if ray.is_initialized():
        return True
    if not local_ray_running():
        return False
    try:
        init_ray(settings, "auto", logging_level=logging.WARNING)
    except ConnectionError:
        return False
    return True


def dashboard_url() -> str:
    """The connected cluster's dashboard, as Ray reports it."""
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:
        url = ""
    if not url:
        return DEFAULT_DASHBOARD_URL
    return url if url.startswith("http") else f"http://{url}"


def start_ray_head(settings: Settings) -> None:
    """`ray start --head` in its own session: the head outlives this command and a Ctrl-C in the
    terminal that ran it; only `switchboard down` (or `ray stop`) stops it. It starts with the
    platform's Ray environment (local.ray_environment): the raylet passes it to every worker."""
    from switchboard.local import ray_environment

    command = [ray_executable(), "start", "--head", "--dashboard-host", "127.0.0.1",
               "--port", str(RAY_HEAD_PORT), "--disable-usage-stats"]
    print("switchboard: starting a Ray head (ray start --head) ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, start_new_session=True,
                          stdin=subprocess.DEVNULL, timeout=RAY_START_TIMEOUT_S,
                          env={**os.environ, **ray_environment(settings)})
    if done.returncode != 0:
        raise CliError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def stop_ray() -> None:
    done = subprocess.run([ray_executable(), "stop", "--force"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        print(f"switchboard: `ray stop --force` failed:\n{done.stdout}{done.stderr}", file=sys.stderr)


def disconnect_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ---- up ----------------------------------------------------------------------------------------------

def warn_if_dev_secret(settings: Settings) -> None:
    if settings.is_dev_secret:
        bar = "!" * 78
        print(f"{bar}\n! SWITCHBOARD_JWT_SECRET is not set: tokens are signed with the public development\n"
              f"! secret, so anyone can mint one. Set a long random SWITCHBOARD_JWT_SECRET outside\n"
              f"! of local development.\n{bar}", file=sys.stderr, flush=True)


def initial_state(settings: Settings, ray_started: bool) -> dict:
    """What `down` needs, written before anything but Ray is started so a failed `up` is undone too."""
    return {
        "ray_started": ray_started,
        "embedded_postgres": not settings.database_url,
        "database_url": None,
        "host": settings.host,
        "port": settings.port,
        "namespace": settings.namespace,
        "regions": list(settings.regions),
        "shards_per_region": settings.shards_per_region,
        "http_url": http_url(settings),
        "ws_url": ws_url(settings),
        "dashboard_url": DEFAULT_DASHBOARD_URL,
        "started_at": time.time(),
    }


def bring_up(settings: Settings) -> int:
    from switchboard import local

    previous = read_state(settings) or {}
    started_ray = False
    if not local_ray_running():
        start_ray_head(settings)
        started_ray = True
    else:
        print("switchboard: using the Ray cluster already running (its processes keep the "
              "environment they started with)", file=sys.stderr, flush=True)
    # Another `up` from this data_dir may have started the head; keep its claim so `down` stops it.
    state = initial_state(settings, ray_started=started_ray or bool(previous.get("ray_started")))
    write_state(settings, state)

    if not connect_ray(settings):
        raise CliError("cannot connect to the Ray cluster at address 'auto' (is RAY_ADDRESS right?)")
    state["dashboard_url"] = dashboard_url()
    try:
        platform = local.start_platform(settings, ray_address="auto", keep_postgres=True)
    except Exception as error:
        raise CliError(f"the platform did not start: {error}\n"
                       f"switchboard: `switchboard down` (same environment) removes what was started") from error
    state["database_url"] = redacted(platform.database_url)
    state["embedded_postgres"] = platform.embedded_postgres
    write_state(settings, state)
    print_up_banner(settings, state)
    return 0


def print_up_banner(settings: Settings, state: dict) -> None:
    database = (f"embedded PostgreSQL under {Path(settings.data_dir).expanduser()}"
                if state["embedded_postgres"] else f"DATABASE_URL {state['database_url']}")
    print(f"""Switchboard is up.
  HTTP API       {state['http_url']}/v1   (GET {state['http_url']}/v1/health)
  WebSocket      {state['ws_url']}
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
    elif connect_ray(settings):
        try:
            stop_platform(settings)
        except Exception as error:  # Ray and PostgreSQL must still be stopped
            print(f"switchboard down: removing the platform from Ray failed: {error}", file=sys.stderr)
    disconnect_ray()
    if state and state.get("ray_started"):
        stop_ray()
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
    ray_up = connect_ray(settings)
    print(f"ray       {'up, dashboard ' + dashboard_url() if ray_up else 'not running'}")
    answer = health(http_url(settings))
    print(f"health    {http_url(settings)}/v1/health: {answer}")
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
    print(f"migrated {redacted(database_url)} to the newest revision")
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
