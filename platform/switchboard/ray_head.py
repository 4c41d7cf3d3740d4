"""The Ray head `switchboard up` starts on this machine, and how `down` stops it, and only it.

The head listens on loopback only (ray_loopback.py) with Ray's token auth, and its processes carry
an environment variable naming the start that made them (RAY_OWNER_VARIABLE; Ray hands its
environment down to everything it spawns: GCS, raylet, dashboard, client server, workers). `down`
stops exactly the processes carrying the value it recorded, by their pids: `ray stop` would stop
every Ray on the machine, a test run's or a benchmark's included.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import uuid

from switchboard.settings import Settings

log = logging.getLogger(__name__)

RAY_HEAD_PORT = 6379
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8265"
GCS_PROBE_TIMEOUT_S = 2
# `ray start` normally takes ~5 s here; allow for a slow first start (dashboard, log dirs).
RAY_START_TIMEOUT_S = 120
RAY_OWNER_VARIABLE = "SWITCHBOARD_RAY_OWNER"
STOP_GRACE_S = 5.0


class RayHeadError(Exception):
    """The head could not be started."""


def running_gcs() -> str | None:
    """RAY_ADDRESS, or the address of a GCS on this machine that accepts connections: what
    "auto" would connect to. Checked before ray.init because ray.init on a half-dead cluster
    waits a minute for the GCS and then aborts the whole process, which would cut `down` short
    before it stops anything."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private.services import find_gcs_addresses

    return next((address for address in find_gcs_addresses() if accepts_connections(address)), None)


def accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=GCS_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def connect(settings: Settings) -> bool:
    """Connect this process to the running Ray cluster; False if there is none. A cluster on
    loopback (the head `up` starts) is joined on loopback."""
    import ray

    from switchboard.local import init_ray

    if ray.is_initialized():
        return True
    address = running_gcs()
    if address is None:
        return False
    loopback = address.rpartition(":")[0] in ("127.0.0.1", "localhost")
    try:
        init_ray(settings, "auto", loopback=loopback, logging_level=logging.WARNING)
    except ConnectionError:
        return False
    return True


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


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


def start(settings: Settings) -> str:
    """`ray start --head` on loopback, in its own session: the head outlives this command and a
    Ctrl-C in the terminal that ran it. Returns the owner mark its processes carry."""
    from switchboard.local import ensure_ray_token, loopback_environment, ray_environment

    owner = uuid.uuid4().hex
    environment = {**os.environ, **ray_environment(settings), **loopback_environment(), RAY_OWNER_VARIABLE: owner}
    os.environ["RAY_AUTH_MODE"] = "token"
    ensure_ray_token()
    command = [sys.executable, "-m", "switchboard.ray_loopback", "start", "--head", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--port", str(RAY_HEAD_PORT), "--disable-usage-stats"]
    print("switchboard: starting a Ray head on 127.0.0.1 (ray start --head) ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, start_new_session=True,
                          stdin=subprocess.DEVNULL, timeout=RAY_START_TIMEOUT_S, env=environment)
    if done.returncode != 0:
        raise RayHeadError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return owner


def owned_processes(owner: str) -> list:
    """This machine's processes carrying the owner mark (those we may read: our own), and their
    descendants: the raylet starts its agents with an environment of their own."""
    import psutil

    found: dict[int, object] = {}
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(RAY_OWNER_VARIABLE) == owner:
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found.setdefault(child.pid, child)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop(owner: str) -> int:
    """Stop the head started with this owner mark: SIGTERM, then SIGKILL what is left after
    STOP_GRACE_S. Returns how many processes were stopped."""
    import psutil

    processes = owned_processes(owner)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=STOP_GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)
    return len(processes)
