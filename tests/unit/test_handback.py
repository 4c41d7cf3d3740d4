"""Which actors a region's router moves home, and in what order (actors/handback.py)."""

from __future__ import annotations

from switchboard.actors.handback import away_from_home


def test_nothing_moves_while_the_home_region_has_no_live_nodes():
    assert away_from_home("eu", {"shard:eu:0": "us", "router:eu": "us"}, {"us", "ap"}) == []


def test_shards_move_first_and_the_router_last():
    locations = {"router:eu": "us", "shard:eu:1": "us", "shard:eu:0": "us"}
    assert away_from_home("eu", locations, {"eu", "us"}) == ["shard:eu:0", "shard:eu:1", "router:eu"]


def test_actors_at_home_or_restarting_stay():
    locations = {"router:eu": "eu", "shard:eu:0": None, "shard:eu:1": "us", "shard:eu:2": "eu"}
    assert away_from_home("eu", locations, {"eu", "us"}) == ["shard:eu:1"]
