"""Where a region's actors may run (actors/registry.py): on the nodes labelled with the region,
then on its mirror's; anywhere on a cluster without region labels (a one-node local run)."""

from __future__ import annotations

from switchboard.actors.registry import REGION_LABEL, region_placement
from switchboard.settings import Settings

THREE = Settings(region="eu", regions=("eu", "us", "ap"))


def test_a_labelled_cluster_pins_a_region_and_falls_back_to_its_mirror():
    assert region_placement(THREE, "us", {"eu", "us", "ap"}) == {
        "label_selector": {REGION_LABEL: "us"},
        "fallback_strategy": [{"label_selector": {REGION_LABEL: "ap"}}],
    }


def test_the_selector_holds_while_the_regions_own_nodes_are_gone():
    # A region whose nodes are all lost keeps its selector: Ray places it on the mirror's nodes
    # through the fallback, and back home on its next start once its nodes return.
    options = region_placement(THREE, "eu", {"us", "ap"})
    assert options["label_selector"] == {REGION_LABEL: "eu"}
    assert options["fallback_strategy"] == [{"label_selector": {REGION_LABEL: "us"}}]


def test_a_listed_mirror_is_the_fallback():
    settings = THREE.replace(region_mirrors=("eu=ap",))
    assert region_placement(settings, "eu", {"eu"})["fallback_strategy"] == [{"label_selector": {REGION_LABEL: "ap"}}]


def test_a_lone_region_has_no_fallback():
    assert region_placement(Settings(), "local", {"local"}) == {"label_selector": {REGION_LABEL: "local"}}


def test_no_labels_no_constraint():
    assert region_placement(THREE, "eu", set()) == {}


def test_a_region_without_its_own_nodes_or_its_mirrors_is_a_placement_problem():
    from switchboard.actors.registry import placement_problem

    assert placement_problem(THREE, set()) is None  # no labels: one node for everything
    assert placement_problem(THREE, {"eu", "us", "ap"}) is None
    assert placement_problem(THREE, {"eu", "ap"}) is None  # us is taken over by ap, its mirror
    problem = placement_problem(Settings(), {"eu", "us"})  # labelled nodes, but the default region "local"
    assert problem is not None and "region=local" in problem and "SWITCHBOARD_REGIONS" in problem
