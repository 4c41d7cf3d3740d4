"""Each region's gateway replicas on its own nodes, and on its mirror's when they are lost (issue
#10 points 1, 3 and 4, the gateways' half): switchboard.chaos.gateway_probe as a subprocess (a
labelled multi-node cluster of its own). The replicas are placed by their region's label, not on
the head; when every node of a region is removed, that region's entry point answers healthy
again from a replica on the mirror's node, and the other region's stays healthy."""

from __future__ import annotations

import pytest
from json_run import run_json

RUN_TIMEOUT_S = 300
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)


def test_a_lost_regions_gateway_comes_back_on_its_mirrors_node():
    result, output, returncode = run_json("switchboard.chaos.gateway_probe", ["--regions", "eu,us", "--lose", "us"],
                                          RUN_TIMEOUT_S)
    assert "error" not in result and returncode == 0, (result, output)
    print(f"\ngateway takeover: {result['lost']} -> {result['mirror']} in {result['gateway_takeover_s']} s")
    assert result["before"] == {"eu": ["eu"], "us": ["us"]}, result  # each on its region's node
    assert result["after"] == {"eu": ["eu"], "us": ["eu"]}, result  # us's replica now on eu's node
    assert result["others_healthy"], result
    assert result["gateway_takeover_s"] < 30, result
