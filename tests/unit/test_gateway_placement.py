"""The gateway deployment asks for SWITCHBOARD_GATEWAY_NODE_RESOURCE when it is set, and for no
custom resource (so any node will do) when it is not."""

from __future__ import annotations

from switchboard.gateway.app import gateway_application
from switchboard.settings import Settings


def actor_options(settings: Settings) -> dict:
    return gateway_application(settings, "postgresql://unused")._bound_deployment.ray_actor_options


def test_replicas_ask_for_the_ingress_resource_when_one_is_set():
    options = actor_options(Settings(gateway_node_resource="ingress"))
    assert options["resources"] == {"ingress": 0.001}
    assert options["num_cpus"] == 0


def test_replicas_ask_for_no_custom_resource_by_default():
    assert not actor_options(Settings()).get("resources")


def region_options(settings: Settings, region: str, labelled: set[str]) -> dict:
    application = gateway_application(settings, "postgresql://unused", region=region, labelled=labelled)
    return application._bound_deployment.ray_actor_options


def test_each_regions_replicas_go_to_its_labelled_nodes_then_its_mirrors():
    settings = Settings(region="eu", regions=("eu", "us", "ap"))
    options = region_options(settings, "us", {"eu", "us", "ap"})
    assert options["label_selector"] == {"region": "us"}
    assert options["fallback_strategy"] == [{"label_selector": {"region": "ap"}}]


def test_no_labels_on_the_cluster_means_no_selector_and_the_resource_wins_over_labels():
    settings = Settings(region="eu", regions=("eu", "us"))
    assert "label_selector" not in region_options(settings, "us", set())
    pinned = region_options(settings.replace(gateway_node_resource="ingress"), "us", {"eu", "us"})
    assert pinned["resources"] == {"ingress": 0.001} and "label_selector" not in pinned
