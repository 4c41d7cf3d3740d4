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
