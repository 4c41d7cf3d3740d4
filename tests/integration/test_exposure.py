"""Nothing of the platform listens beyond loopback on a local run, Ray asks for its token, and
`switchboard up` refuses to serve other machines with the public development secret.

Two ways in: the tests' own platform (started as `switchboard up` starts Ray: loopback only, token
auth), whose processes are found by ancestry and by their directories; and a real
`switchboard up` / `down` in a PID and network namespace of its own (as root, which CI is), where
everything listening belongs to it. Before this was fixed, a plain `scripts/run` listened on every
interface: the GCS, the raylets' and every actor's gRPC ports, HAProxy's stats and metrics ports
and the Ray client port, with Ray's auth off.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def platform_processes(sb) -> set[int]:
    """This test run's Ray and platform processes: our descendants, and whatever runs out of the
    platform's data directory or Ray's temp directory (daemons that left our process tree)."""
    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    marks = [sb.settings.data_dir]
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(mark in cmdline for mark in marks) or "/tmp/sbray-" in cmdline:
            pids.add(process.info["pid"])
    return pids


def test_every_listening_socket_of_the_tests_platform_is_on_loopback(sb):
    pids = platform_processes(sb)
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "found no listening socket of the platform at all: the check itself is broken"
    exposed = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in listening if not is_loopback(c.laddr.ip)]
    assert not exposed, f"listening beyond loopback: {exposed}"
    # The ones that used to be on every interface are among those checked.
    names = {psutil.Process(c.pid).name() for c in listening}
    assert {"gcs_server", "raylet", "haproxy"} <= names, names


def test_the_tests_ray_runs_with_token_authentication(sb):
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert ray.is_initialized()


def test_up_refuses_to_serve_other_machines_with_the_development_secret(tmp_path):
    environment = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path), "SWITCHBOARD_HOST": "0.0.0.0"}
    environment.pop("SWITCHBOARD_JWT_SECRET", None)
    done = subprocess.run([str(VENV_BIN / "switchboard"), "up"], env=environment, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SWITCHBOARD_JWT_SECRET" in done.stderr and "SWITCHBOARD_HOST=0.0.0.0" in done.stderr, done.stderr
    assert not (tmp_path / "state.json").exists()  # refused before anything started
    short = {**environment, "SWITCHBOARD_JWT_SECRET": "too-short"}
    done = subprocess.run([str(VENV_BIN / "switchboard"), "up"], env=short, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "32 bytes" in done.stderr, done.stderr


@pytest.mark.parametrize("name, raw", [("SWITCHBOARD_SEND_RATE_PER_S", "0"), ("SWITCHBOARD_SHARDS_PER_REGION", "0"),
                                       ("SWITCHBOARD_SEND_TIMEOUT_S", "nan")])
def test_up_refuses_a_nonsense_setting_in_one_line_naming_it(tmp_path, name, raw):
    environment = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path), name: raw}
    done = subprocess.run([str(VENV_BIN / "switchboard"), "up"], env=environment, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "state.json").exists()  # refused before anything started


NAMESPACE_SCRIPT = textwrap.dedent("""
    set -u
    ip link set lo up
    export HOME="$SB_HOME" SWITCHBOARD_DATA_DIR="$SB_HOME/data" SWITCHBOARD_PORT=18000
    cd "$SB_ROOT"
    "$SB_BIN/switchboard" up > "$SB_HOME/up.log" 2>&1 || { echo "UP FAILED"; cat "$SB_HOME/up.log"; exit 3; }
    echo "LISTENING"
    ss -ltnH | awk '{print $4}'
    echo "END"
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN=not-the-token timeout 60 "$SB_BIN/python" -c '
import ray, sys
try:
    ray.init(address="auto", log_to_driver=False)
except Exception as error:
    print("REFUSED", type(error).__name__)
    sys.exit(0)
print("ACCEPTED")
'
    "$SB_BIN/switchboard" down > "$SB_HOME/down.log" 2>&1
    echo "DOWN $?"
    sleep 1
    echo "LEFT"
    ps -eo comm= | grep -vE '^(bash|ps|grep|sleep)$' || true
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_switchboard_up_listens_on_loopback_only_and_down_stops_what_it_started(tmp_path):
    """The real `switchboard up` in a PID and network namespace of its own: everything listening
    there is the platform's. Every socket is on loopback; a wrong Ray token is refused; `down`
    leaves none of its processes running."""
    environment = {**os.environ, "SB_HOME": str(tmp_path), "SB_ROOT": str(ROOT), "SB_BIN": str(VENV_BIN)}
    for variable in ("RAY_ADDRESS", "SWITCHBOARD_HOST", "SWITCHBOARD_JWT_SECRET", "DATABASE_URL"):
        environment.pop(variable, None)
    done = subprocess.run(["unshare", "--pid", "--net", "--mount-proc", "--fork", "bash", "-c", NAMESPACE_SCRIPT],
                          env=environment, capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    output = done.stdout
    assert "UP FAILED" not in output and "LISTENING" in output, output + done.stderr
    listening = output.split("LISTENING", 1)[1].split("END", 1)[0].split()
    assert len(listening) >= 5, output  # GCS, raylet, dashboard, Serve's HAProxy, ...
    hosts = [address.rsplit(":", 1)[0].strip("[]") for address in listening]
    exposed = [address for address, host in zip(listening, hosts) if host in ("*", "0.0.0.0", "::") or not is_loopback(host)]
    assert not exposed, f"`switchboard up` listens beyond loopback: {exposed}"
    assert "REFUSED" in output, f"a wrong Ray token was accepted: {output}"
    assert "DOWN 0" in output, output
    left = output.split("LEFT", 1)[1].split()
    assert not left, f"processes left after down: {left}"
