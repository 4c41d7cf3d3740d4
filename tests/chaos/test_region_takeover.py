"""Regions on labelled nodes, a region's loss and its return (issue #10 points 1, 4 and 5, the
actors' half):
switchboard.chaos.region_probe as a subprocess (it needs a multi-node Ray cluster of its own,
while other tests share a Ray instance in this process). Every region's router and shards start
on their own region's node, never on the head; when every node of a region is removed, its router
and shards come back on its mirror's node and answer healthy (recovered from PostgreSQL), and the
other regions stay healthy throughout; when the region's node returns, its actors move home."""

from __future__ import annotations

import pytest
from json_run import run_json

RUN_TIMEOUT_S = 300
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)


def probe(*arguments: str) -> dict:
    result, output, returncode = run_json("switchboard.chaos.region_probe", list(arguments), RUN_TIMEOUT_S)
    assert "error" not in result and returncode == 0, (result, output)
    return result


def test_each_regions_actors_run_on_its_nodes_and_move_to_the_mirror_when_they_are_lost():
    result = probe("--regions", "eu,us,ap", "--lose", "us", "--shards", "2")
    print(f"\nregion takeover: {result['lost']} -> {result['mirror']} in {result['takeover_s']} s")
    for name, region in result["before"].items():
        assert region == name.split(":")[1], (name, region)  # router:eu / shard:eu:0 on an eu node
    assert result["mirror"] == "ap"  # the next region in the list
    for name, region in result["after"].items():
        home = name.split(":")[1]
        assert region == ("ap" if home == "us" else home), (name, region)
    assert result["others_healthy"]
    assert result["takeover_s"] < 30, result
    # The region's node returns: its router moves the region's actors home (drain, checkpoint,
    # stop, start at home), the shards first; every one answers healthy there.
    print(f"hand back to {result['lost']}: {result['handback_s']} s, "
          f"longest gap in a shard's answers {result['handback_pause_s']} s")
    for name, region in result["home"].items():
        assert region == name.split(":")[1], (name, region)
    assert result["handback_pause_s"] < result["handback_s"] + 1, result
