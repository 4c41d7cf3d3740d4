"""cluster.yaml starts every node's Ray with the platform's Ray environment (local.ray_environment),
as `switchboard up` does on one machine: a variable added there and forgotten here would leave a
real cluster slower to recover (or on the slow ingress path) than every test says."""

from __future__ import annotations

import pathlib
import shlex

import yaml

from switchboard.local import ray_environment
from switchboard.settings import Settings

CLUSTER_YAML = pathlib.Path(__file__).resolve().parents[2] / "cluster.yaml"


def start_commands(key: str) -> list[str]:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    return [command for command in config[key] if " ray start " in f" {command} " or "/ray start" in command]


def assignments(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))


# Paths differ between this checkout's venv and the nodes' (~/switchboard-venv): the program must match.
PATHS = ("RAY_SERVE_HAPROXY_BINARY_PATH",)
# Follows the open-files limit of the machine it is computed on (local.haproxy_maxconn); the
# cluster's nodes get the cap a server's limit allows.
PER_MACHINE = ("RAY_SERVE_HAPROXY_MAXCONN",)


def test_head_and_workers_start_ray_with_the_platform_environment():
    expected = ray_environment(Settings())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = start_commands(key)
        assert len(commands) == 1, f"{key}: one `ray start` expected, found {commands}"
        found = assignments(commands[0])
        missing = {name: value for name, value in expected.items()
                   if (pathlib.Path(found.get(name, "")).name != pathlib.Path(value).name if name in PATHS
                       else name not in found if name in PER_MACHINE
                       else found.get(name) != value)}
        assert not missing, f"{key} lacks {missing}"


def test_haproxy_connection_cap_fits_the_open_files_limit():
    from switchboard.local import HAPROXY_MAXCONN_MAX, haproxy_maxconn

    assert haproxy_maxconn(20_000) == 7_800  # this machine: HAProxy refused to start at 65,536
    assert haproxy_maxconn(1_048_576) == HAPROXY_MAXCONN_MAX
    assert 2.5 * haproxy_maxconn(20_000) + 500 <= 20_000
