"""CORS of the HTTP API (issue #9 point 1): with no origins listed the app sends no CORS headers
at all (the gateway's own page needs none); with origins listed, a preflight or a request from a
listed origin is allowed and any other origin gets no Access-Control-Allow-Origin."""

from __future__ import annotations

import httpx
import pytest

from switchboard.gateway.app import build_app
from switchboard.gateway.core import GatewayCore
from switchboard.settings import Settings

UNREACHABLE_URL = "postgresql+psycopg://nobody@127.0.0.1:9/none"  # never connected to here
LISTED = "https://chat.example.com"


def client_for(settings: Settings) -> httpx.AsyncClient:
    app = build_app(GatewayCore(settings, UNREACHABLE_URL))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")


def preflight(origin: str) -> dict:
    return {"origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"}


async def test_a_listed_origin_passes_the_preflight():
    async with client_for(Settings(allowed_origins=(LISTED,))) as http:
        answer = await http.options("/v1/conversations", headers=preflight(LISTED))
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == LISTED
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in answer.headers  # bearer tokens, no cookies


@pytest.mark.parametrize("origin", ["https://evil.example", "https://chat.example.com.evil.example", "null"])
async def test_another_origin_is_not_allowed(origin):
    async with client_for(Settings(allowed_origins=(LISTED,))) as http:
        answer = await http.options("/v1/conversations", headers=preflight(origin))
        simple = await http.get("/v1/conversations", headers={"origin": origin})
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_no_origins_listed_means_no_cors_headers():
    async with client_for(Settings()) as http:
        answer = await http.options("/v1/conversations", headers=preflight(LISTED))
        simple = await http.get("/v1/conversations", headers={"origin": LISTED})
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in simple.headers
