"""Each region's gateway entry point (gateway/entry_points.py): its Serve application and path,
the order a client fails over in, and the configured public URLs."""

from __future__ import annotations

import pytest

from switchboard.gateway.entry_points import (
    APP_NAME, app_name, failover_order, public_origins, public_url, route_prefix)
from switchboard.settings import Settings, SettingsError

SETTINGS = Settings(region="us", regions=("eu", "us", "ap"))


def test_the_default_region_keeps_the_root_and_the_others_get_their_path():
    assert (app_name(SETTINGS, "us"), route_prefix(SETTINGS, "us")) == (APP_NAME, "/")
    assert (app_name(SETTINGS, "eu"), route_prefix(SETTINGS, "eu")) == ("switchboard-eu", "/regions/eu")


def test_failover_goes_to_the_mirror_first_then_the_rest_in_order():
    assert failover_order(SETTINGS, "us") == ["us", "ap", "eu"]  # us's mirror: the next region, ap
    assert failover_order(SETTINGS, "ap") == ["ap", "eu", "us"]  # the last wraps to the first
    assert failover_order(SETTINGS.replace(region_mirrors=("us=eu",)), "us") == ["us", "eu", "ap"]
    assert failover_order(Settings(), "local") == ["local"]


def test_a_configured_url_replaces_the_regions_path_and_its_origins_are_listed():
    settings = SETTINGS.replace(region_urls=("eu=https://eu.chat.example.com/", "ap=http://10.0.0.5:8000/sb"))
    assert public_url(settings, "eu") == "https://eu.chat.example.com"
    assert public_url(settings, "us") == "/regions/us"
    assert public_origins(settings) == ["http://10.0.0.5:8000", "https://eu.chat.example.com",
                                        "ws://10.0.0.5:8000", "wss://eu.chat.example.com"]


@pytest.mark.parametrize("bad", ["eu", "xx=https://x.example.com", "eu=ftp://x.example.com", "eu=https://",
                                 "eu=https://x.example.com/?q=1", "eu=https://x.example.com/a b"])
def test_a_region_url_that_is_no_regions_http_url_is_refused(bad):
    with pytest.raises(SettingsError, match="SWITCHBOARD_REGION_URLS"):
        SETTINGS.replace(region_urls=(bad,))
