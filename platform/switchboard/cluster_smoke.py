"""scripts/cluster-smoke: the `ray up` path proven on this one machine (issue #11 point 4).

Two "machines" on one host: the head at 127.0.0.1 and a worker at 127.0.0.2 (the whole 127/8 block
is on the loopback interface), reached by Ray's local provider over SSH like any other. The script
installs what it needs (openssh-server and rsync, with apt-get as root), runs its own sshd on both
addresses with a throwaway host key and a throwaway client key (no system file is touched),
writes a cluster config whose start commands are cluster.yaml's (the platform's Ray environment,
Ray's ports private, token auth; the worker's region label computed from the address SSH reached,
since the local provider cannot give nodes labels), runs `ray up -y`, starts the platform on the
head with `ray exec`, waits for its health, sends and receives one message with the SDK through
the Serve port, runs `switchboard scale` once, then `switchboard down`, `ray down -y`, and removes
everything it made.

`ray stop` (which `ray down` runs) stops every Ray process on a machine, so the script refuses to
run while any other Ray runs here, and inside pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from switchboard.local import haproxy_maxconn
from switchboard.private_ports import free_port
from switchboard.settings import Settings

HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
REGION = "local"
NODES_TIMEOUT_S = 240
HEALTH_TIMEOUT_S = 240
COMMAND_TIMEOUT_S = 300
RAY_DOWN_TIMEOUT_S = 60
VENV = Path(sys.executable).parent  # this checkout's venv: the "machines" share the disk
CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
GCS_PORT = 6379  # cluster.yaml's
# cluster.yaml's workers read their region from this file; on one host both "machines" share it.
REGION_FILE = Path.home() / "switchboard-region"


class SmokeError(Exception):
    pass


def log(line: str) -> None:
    print(f"cluster-smoke [{time.strftime('%H:%M:%S')}] {line}", flush=True)


def other_ray_running() -> bool:
    found = subprocess.run(["pgrep", "-f", "(raylet|gcs_server)"], capture_output=True, text=True)
    return bool(found.stdout.strip())


def install_packages() -> None:
    missing = [package for package, program in (("openssh-server", "/usr/sbin/sshd"), ("rsync", "rsync"))
               if shutil.which(program) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SmokeError(f"install {' '.join(missing)} first (apt-get needs root)")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, check=True, capture_output=True)


class Sshd:
    """Our own sshd on port 22 of both addresses, accepting only the throwaway key."""

    def __init__(self, work: Path):
        self.work = work
        self.key = work / "id_ed25519"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work / "host_key")], check=True)
        (self.work / "authorized_keys").write_text((self.work / "id_ed25519.pub").read_text())
        os.chmod(self.work / "authorized_keys", 0o600)
        config = self.work / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            ListenAddress {HEAD_IP}:22
            ListenAddress {WORKER_IP}:22
            HostKey {self.work / 'host_key'}
            AuthorizedKeysFile {self.work / 'authorized_keys'}
            PidFile {self.work / 'sshd.pid'}
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            AcceptEnv LANG LC_*
            """))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.work / "sshd.log", "w"))
        deadline = time.monotonic() + 10
        while subprocess.run(["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                              "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"root@{WORKER_IP}", "true"],
                             capture_output=True).returncode:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SmokeError(f"sshd did not take our key: {(self.work / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def start_commands(head: bool) -> list[str]:
    """cluster.yaml's own start commands, made to run as two nodes of one host: its `ray stop`
    left out (on one host a worker's would stop the head), the venv this checkout's, each node
    on its own loopback address, and the worker's per-node ports its own."""
    import yaml

    commands = yaml.safe_load(CLUSTER_YAML.read_text())["head_start_ray_commands" if head else "worker_start_ray_commands"]
    command = " ".join(c for c in commands if not c.strip().endswith("ray stop"))
    command = command.replace("$HOME/switchboard-venv/bin/", f"{VENV}/").replace("~/switchboard-venv/bin/", f"{VENV}/")
    # A server's cap; this host's open-files limit may allow fewer (HAProxy would not start).
    command = command.replace("RAY_SERVE_HAPROXY_MAXCONN=65536", f"RAY_SERVE_HAPROXY_MAXCONN={haproxy_maxconn()}")
    # On one host the head must keep 127.0.0.1 as its address, and a worker the head's address
    # (Ray would turn either into the machine's routable one): ray_loopback.py, the way
    # `switchboard up` starts its own head.
    command = command.replace(f"{VENV}/ray start", f"{VENV}/python -m switchboard.ray_loopback start")
    if head:
        return [f"{command} --node-ip-address={HEAD_IP} --dashboard-port={free_port()} "
                f"--ray-client-server-port={free_port()} --resources='{{\"gateway\": 1}}'"]
    return [f"{command} --node-ip-address={WORKER_IP} --dashboard-agent-listen-port={free_port()} "
            f"--metrics-export-port={free_port()}"]


def cluster_config(work: Path, key: Path) -> Path:
    config = {
        "cluster_name": f"sbsmoke-{secrets.token_hex(3)}",
        "provider": {"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key)},
        "file_mounts": {str(work / "mounted"): str(work / "to_mount")},
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": start_commands(head=True),
        "worker_start_ray_commands": start_commands(head=False),
        "min_workers": 1, "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 60,
    }
    (work / "to_mount").mkdir()
    (work / "to_mount" / "hello").write_text("rsync reached the node\n")
    path = work / "cluster.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def run(command: list[str], timeout_s: float = COMMAND_TIMEOUT_S, env: dict | None = None) -> str:
    log("$ " + " ".join(command)[:200])
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode:
        raise SmokeError(f"{command[:3]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def ray_exec(config: Path, command: str, env: dict[str, str]) -> str:
    exports = " ".join(f"{name}={value}" for name, value in env.items())
    return run([str(VENV / "ray"), "exec", str(config), f"{exports} {command}"])


def wait_for_nodes(config: Path, env: dict[str, str]) -> None:
    deadline = time.monotonic() + NODES_TIMEOUT_S
    # A driver on this host joins the loopback head on loopback (as `switchboard` itself does).
    script = ("import ray, json; from switchboard.ray_loopback import keep_ray_on_loopback; keep_ray_on_loopback(); "
              "ray.init(address='auto', logging_level='ERROR'); "
              "print(json.dumps([[n['NodeManagerAddress'], n.get('Labels', {}).get('region')] "
              "for n in ray.nodes() if n['Alive']]))")
    while True:
        answer = ray_exec(config, f"{VENV / 'python'} -c \"{script}\"", env)
        nodes = json.loads(next(line for line in answer.splitlines() if line.startswith("[[")))
        log(f"nodes alive: {nodes}")
        if [WORKER_IP, REGION] in nodes and len(nodes) == 2:
            return
        if time.monotonic() > deadline:
            raise SmokeError(f"the worker never joined with its region label: {nodes}")
        time.sleep(5)


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=3) as response:
                if response.status == 200:
                    return
        except Exception as error:
            if time.monotonic() > deadline:
                raise SmokeError(f"{url}/v1/health never answered 200: {error}") from None
        time.sleep(1)


async def one_message(url: str, secret: str) -> int:
    """alice sends to bob through the Serve port; bob's socket hears it. Returns its seq."""
    from switchboard.auth import mint_token
    from switchboard.client import Client, MessageEvent

    alice = Client(url, mint_token(secret, "smoke-alice"))
    bob = Client(url, mint_token(secret, "smoke-bob"))
    async with alice, bob:
        conversation = await alice.api.create_conversation(["smoke-bob"], title="smoke")
        conversation_id = conversation.conversation_id

        async def heard():
            async for event in bob.events():
                if isinstance(event, MessageEvent) and event.message.conversation_id == conversation_id:
                    return event.message
        listening = asyncio.ensure_future(asyncio.wait_for(heard(), 30))
        sent = await asyncio.wait_for(alice.send(conversation_id, "hello over ray up"), 30)
        message = await listening
    if message.message_id != sent.message_id:
        raise SmokeError(f"bob heard {message}, not {sent}")
    return message.seq


def smoke(work: Path) -> None:
    sshd = Sshd(work)
    sshd.start()
    log(f"sshd on {HEAD_IP}:22 and {WORKER_IP}:22 with a throwaway key")
    serve_port = free_port()
    config = cluster_config(work, sshd.key)
    secret = secrets.token_urlsafe(32)
    platform_env = {"SWITCHBOARD_DATA_DIR": str(work / "data"), "SWITCHBOARD_JWT_SECRET": secret,
                    "SWITCHBOARD_PORT": str(serve_port), "SWITCHBOARD_REGIONS": REGION,
                    "SWITCHBOARD_GATEWAY_NODE_RESOURCE": "gateway", "SWITCHBOARD_MIN_REPLICAS": "1",
                    "SWITCHBOARD_MAX_REPLICAS": "1", "RAY_ADDRESS": f"{HEAD_IP}:{GCS_PORT}",
                    "RAY_AUTH_MODE": "token"}  # the cluster's token (~/.ray/auth_token) for every driver
    up_env = {**os.environ, "RAY_UP_enable_autoscaler_v2": os.environ.get("RAY_UP_enable_autoscaler_v2", "0")}
    started = time.monotonic()
    made_region_file = not REGION_FILE.exists()
    if made_region_file:
        REGION_FILE.write_text(REGION + "\n")
    elif REGION_FILE.read_text().strip() != REGION:
        raise SmokeError(f"{REGION_FILE} says {REGION_FILE.read_text().strip()!r}; the smoke test needs {REGION!r}")
    try:
        run([str(VENV / "ray"), "up", "-y", "--no-config-cache", str(config)], env=up_env)
        if not (work / "mounted" / "hello").exists():
            raise SmokeError("the file mount did not arrive (rsync)")
        wait_for_nodes(config, platform_env)
        print(ray_exec(config, f"{VENV / 'switchboard'} up", platform_env)[-600:])
        url = f"http://127.0.0.1:{serve_port}"
        wait_healthy(url)
        log(f"message sent and received through {url}: seq {asyncio.run(one_message(url, secret))}")
        scaled = ray_exec(config, f"{VENV / 'switchboard'} scale --shards 2", platform_env)
        log("switchboard scale: " + " | ".join(scaled.strip().splitlines()[-3:]))
        log(f"after the reshard, a message again: seq {asyncio.run(one_message(url, secret))}")
        ray_exec(config, f"{VENV / 'switchboard'} down", platform_env)
    except Exception as error:
        log(f"FAILED: {error}")
        raise
    finally:
        try:
            tear_down(config)
        finally:
            sshd.stop()
            if made_region_file:
                REGION_FILE.unlink(missing_ok=True)
    log(f"passed in {time.monotonic() - started:.0f} s (ray up to ray down)")


def tear_down(config: Path) -> None:
    """`ray down`; then, whatever it did, no Ray process is left (there was none before us: the
    script refused to start otherwise, so stopping every one here stops only ours)."""
    try:
        run([str(VENV / "ray"), "down", "-y", str(config)], timeout_s=RAY_DOWN_TIMEOUT_S)
        log("ray down: done")
    except (SmokeError, subprocess.TimeoutExpired) as error:
        log(f"ray down did not finish ({type(error).__name__}): stopping the nodes with `ray stop --force`")
    subprocess.run([str(VENV / "ray"), "stop", "--force"], capture_output=True, timeout=60)
    if other_ray_running():
        raise SmokeError("Ray processes are still running after the teardown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster-smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the work directory (logs) behind")
    args = parser.parse_args(argv)
    if os.environ.get("PYTEST_CURRENT_TEST"):
        print("cluster-smoke: refuses to run inside pytest (its `ray down` would stop pytest's Ray)", file=sys.stderr)
        return 1
    if other_ray_running():
        print("cluster-smoke: another Ray is running on this machine; `ray down` would stop it. "
              "Stop it first (or run this elsewhere).", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sbsmoke-"))
    started = time.monotonic()
    try:
        install_packages()
        smoke(work)
    except (SmokeError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as error:
        print(f"cluster-smoke: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
