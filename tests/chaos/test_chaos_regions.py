"""The chaos run with regions, short (issue #10 point 6): two regions on labelled worker nodes,
the default region's node lost (its router and shards taken over by the mirror region's node)
and returned (moved home by the planned hand back), a shard kill between; nothing acked lost,
duplicated or unanswered, the history checker finds no violation, and the JSON line carries the
takeover and hand-back figures."""

from __future__ import annotations

import pytest
from json_run import run_json

RUN_TIMEOUT_S = 480
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]


@pytest.fixture(scope="module")
def regions_run() -> tuple[dict, str]:
    figures, output, _ = run_json("switchboard.chaos.runner", [
        "--json", "--regions", "eu,us", "--faults", "region_loss,shard_kill,region_return", "--duration", "50",
        "--interval", "14", "--users", "12", "--seed-mailboxes", "1000"], RUN_TIMEOUT_S)
    return figures, output


def test_a_region_lost_and_returned_loses_nothing(regions_run):
    figures, output = regions_run
    for key in ("lost", "duplicates", "unanswered", "violations", "incomplete", "refused_for_good"):
        assert figures[key] == 0, (key, output)
    assert figures["acked"] == figures["sent"] > 0, output


def test_the_region_faults_struck_and_were_timed(regions_run):
    figures, output = regions_run
    assert figures["faults"].get("region_loss", 0) >= 1 and figures["faults"].get("region_return", 0) >= 1, output
    assert figures["skipped_faults"] == {}, output
    print(f"\ntakeover_s {figures['takeover_s']}, handback_pause_s {figures['handback_pause_s']}, "
          f"handback_send_p99_s {figures['handback_send_p99_s']}")
    assert figures["takeover_s"]["max"] is not None and figures["takeover_s"]["max"] < 30, output
    assert figures["handback_pause_s"]["max"] is not None, output


def test_users_live_in_every_region_and_use_foreign_gateways(regions_run):
    figures, output = regions_run
    layout = figures["layout"]
    assert set(layout["homes"]) == {"eu", "us"} and min(layout["homes"].values()) >= 3, output
    assert layout["on_foreign_gateway"] >= 2 and layout["cross_region_conversations"] >= 1, output
