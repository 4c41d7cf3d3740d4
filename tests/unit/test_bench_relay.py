"""The benchmark client and workloads against the in-memory ceiling relay (no Ray, no database)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from switchboard.benchmarks.client import Target
from switchboard.benchmarks.relay import RelayProcess, free_port
from switchboard.benchmarks.workloads import WORKLOADS

# Small enough that each workload's send phase lasts about a second.
SCALE = 0.1
METRIC_KEYS = {"delivered_per_s", "p50_ms", "p95_ms", "p99_ms", "lost", "refused"}
RUNNER = [sys.executable, "-m", "switchboard.benchmarks.runner"]


@pytest.fixture(scope="module")
def relay_target():
    secret = secrets.token_urlsafe(32)
    with RelayProcess(secret) as relay:
        yield Target("ceiling", relay.base_url, secret)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
async def test_workload_against_relay_loses_nothing(relay_target, name):
    result = await WORKLOADS[name](relay_target, scale=SCALE)

    assert result.delivered > 0
    assert result.lost == 0
    assert result.violations() == []
    assert (result.unanswered, result.errors, result.refused, result.closed_unexpectedly) == (0, 0, 0, 0)
    assert not result.timed_out
    p50, p95, p99 = (result.percentile_ms(p) for p in (50, 95, 99))
    assert 0 < p50 <= p95 <= p99 < 2000
    assert result.delivered_per_s > 0


async def test_relay_closes_4001_on_a_bad_token(relay_target):
    async with connect(relay_target.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "not-a-jwt"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4001


def test_json_line_has_exactly_the_documented_keys():
    run = subprocess.run([*RUNNER, "--skip-platform", "--json", "--scale", "0.05"],
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(data) == {"w1", "w2", "w3", "ceiling", "capacity"}
    assert set(data["ceiling"]) == {"w1", "w2", "w3"}
    assert data["capacity"] == {"platform": None, "ceiling": None}  # not asked for
    for name in ("w1", "w2", "w3"):
        assert data[name] is None  # the platform was skipped
        assert set(data["ceiling"][name]) == METRIC_KEYS
        assert data["ceiling"][name]["lost"] == 0


def test_the_capacity_workload_holds_idle_sockets_and_reaches_a_sample_of_them():
    run = subprocess.run([*RUNNER, "--skip-platform", "--only", "capacity", "--json", "--scale", "0.03"],
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    held = json.loads(run.stdout.strip().splitlines()[-1])["capacity"]["ceiling"]
    assert held["held"] == held["wanted"] == 300
    assert held["sample_received"] == "40/40" and held["closed_while_idle"] == 0
    assert held["kb_per_socket"] > 0  # the relay's process grew with its sockets
    assert "capacity" in run.stdout and "ceiling" in run.stdout


def test_unreachable_platform_is_reported_and_fails():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = subprocess.run([*RUNNER, "--skip-ceiling", "--url", url], capture_output=True, text=True, timeout=60)

    assert run.returncode != 0
    assert "not reachable" in run.stderr
