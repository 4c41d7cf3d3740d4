"""The chaos run with regions, short (issue #10 point 6): two regions on labelled worker nodes,
the default region's node lost (its router and shards taken over by the mirror region's node)
and returned (moved home by the planned hand back), a shard kill between; nothing acked lost,
duplicated or unanswered, the history checker finds no violation, and the JSON line carries the
takeover and hand-back figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_TIMEOUT_S = 480
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def regions_run() -> tuple[dict, str]:
    command = [sys.executable, "-m", "switchboard.chaos.runner", "--json", "--regions", "eu,us",
               "--faults", "region_loss,shard_kill,region_return", "--duration", "50", "--interval", "14",
               "--users", "12", "--seed-mailboxes", "1000"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (exit {done.returncode}); stderr tail:\n{done.stderr[-4000:]}"
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"the last line is not JSON (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}")
    return figures, done.stdout + f"\n(exit {done.returncode})\n" + done.stderr[-3000:]


def test_a_region_lost_and_returned_loses_nothing(regions_run):
    figures, output = regions_run
    for key in ("lost", "duplicates", "unanswered", "violations", "incomplete", "refused_for_good"):
        assert figures[key] == 0, (key, output)
    assert figures["acked"] == figures["sent"] > 0, output


def test_the_region_faults_struck_and_were_timed(regions_run):
    figures, output = regions_run
    assert figures["faults"].get("region_loss", 0) >= 1 and figures["faults"].get("region_return", 0) >= 1, output
    assert figures["skipped_faults"] == {}, output
    print(f"\ntakeover_s {figures['takeover_s']}, handback_pause_s {figures['handback_pause_s']}")
    assert figures["takeover_s"]["max"] is not None and figures["takeover_s"]["max"] < 30, output
    assert figures["handback_pause_s"]["max"] is not None, output
