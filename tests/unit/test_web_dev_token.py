"""The web page's routes (gateway/web.py) on the gateway's real FastAPI app (build_app), with a
stand-in core that only carries settings: the page and its files, and the development sign-in,
which mints a token only when the dev-mode setting is on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from switchboard.auth import Identity, verify_token
from switchboard.gateway.app import build_app
from switchboard.settings import Settings

SECRET = "unit-test-secret-" + "x" * 64


def client(dev_mode: bool, **settings_changes) -> TestClient:
    settings = Settings(jwt_secret=SECRET, dev_mode=dev_mode, **settings_changes)
    return TestClient(build_app(SimpleNamespace(settings=settings, home_region=settings.region)))


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_dev_token_is_refused_when_dev_mode_is_off():
    response = client(dev_mode=False).post("/v1/dev/token", json={"user_id": "alice"})
    assert_error(response, 403, "forbidden")  # the error shape only: no token in it


def test_dev_token_is_refused_when_dev_mode_is_off_even_for_a_bad_body():
    # Nothing about the request is looked at before the switch: no hint that the endpoint works.
    assert_error(client(dev_mode=False).post("/v1/dev/token", content=b"not json"), 403, "forbidden")


def test_dev_token_mints_a_valid_token_for_the_user_when_dev_mode_is_on():
    response = client(dev_mode=True).post("/v1/dev/token", json={"user_id": "alice.b-2_x"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "alice.b-2_x"
    identity = verify_token(SECRET, body["token"], ("local",), "local")
    assert identity == Identity(user_id="alice.b-2_x", region="local")


@pytest.mark.parametrize("body", [{}, {"user_id": ""}, {"user_id": "a" * 65}, {"user_id": "al ice"},
                                  {"user_id": "bob/../x"}, {"user_id": 7}])
def test_dev_token_validates_the_user_id_as_the_protocol_does(body):
    assert_error(client(dev_mode=True).post("/v1/dev/token", json=body), 400, "invalid")


def test_dev_token_with_a_malformed_body_is_invalid():
    assert_error(client(dev_mode=True).post("/v1/dev/token", content=b"[1, 2"), 400, "invalid")


def test_the_page_and_its_files_are_served_with_a_strict_content_policy():
    web = client(dev_mode=False)
    page = web.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Relative to the page's own URL, so that it works under a region's path too.
    assert '"static/app.js"' in page.text and '"static/style.css"' in page.text
    for name, media_type in (("app.js", "text/javascript"), ("api.js", "text/javascript"),
                             ("connection.js", "text/javascript"), ("gateways.js", "text/javascript"), ("conversations.js", "text/javascript"),
                             ("view.js", "text/javascript"), ("style.css", "text/css")):
        response = web.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/static/index.html.bak", "/static/..%2Fweb.py", "/static/../web.py",
                                  "/static/", "/static/nope.js"])
def test_only_the_pages_own_files_are_served(path):
    assert_error(client(dev_mode=False).get(path), 404, "not_found")



def test_the_default_regions_app_answers_under_its_region_path_too():
    web = client(dev_mode=False, region="eu", regions=("eu", "us"))
    moved = web.get("/regions/eu", follow_redirects=False)
    assert moved.status_code in (307, 308) and moved.headers["location"].endswith("/regions/eu/")
    assert web.get("/regions/eu/").text == web.get("/").text
    assert web.get("/regions/eu/static/app.js").status_code == 200
    assert web.get("/regions/eu/v1/gateways").json() == web.get("/v1/gateways").json()
    assert_error(web.get("/regions/euro/v1/gateways"), 404, "not_found")  # a prefix of a name is not it


def test_gateways_lists_this_region_first_then_its_mirror_then_the_rest():
    web = client(dev_mode=False, region="us", regions=("eu", "us", "ap"), region_mirrors=("us=eu",),
                 region_urls=("ap=https://ap.chat.example.com",))
    assert web.get("/v1/gateways").json() == {"region": "us", "gateways": [
        {"region": "us", "url": "/regions/us"}, {"region": "eu", "url": "/regions/eu"},
        {"region": "ap", "url": "https://ap.chat.example.com"}]}


def test_the_pages_policy_lets_it_connect_to_the_configured_region_urls():
    web = client(dev_mode=False, region="eu", regions=("eu", "us"), region_urls=("us=https://us.chat.example.com",))
    policy = web.get("/").headers["content-security-policy"]
    assert "connect-src 'self' https://us.chat.example.com wss://us.chat.example.com;" in policy
    assert "connect-src 'self';" in client(dev_mode=False).get("/").headers["content-security-policy"]
