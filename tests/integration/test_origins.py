"""Browsers of other sites cannot use a user's session (issue #9 point 1): a WebSocket whose Origin
is neither the gateway's own nor listed is refused before `auth` (HTTP 403), the gateway's own
origin and clients that send none (non-browsers) are served, and the page's Content-Security-Policy
lets it connect to its own origin only."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def test_a_websocket_from_another_origin_is_refused_before_auth(sb):
    for origin in ("http://evil.example", "https://127.0.0.1.evil.example", "null"):
        with pytest.raises(InvalidStatus) as refused:
            await connect(sb.ws_url, origin=origin, open_timeout=10)
        assert refused.value.response.status_code == 403, origin


async def test_the_gateways_own_origin_and_no_origin_are_served(sb, new_user):
    alice = new_user("same-origin")
    own = f"http://127.0.0.1:{sb.settings.port}"
    for origin in (own, None):
        async with connect(sb.ws_url, origin=origin, open_timeout=10) as ws:
            await ws.send(f'{{"type": "auth", "token": "{alice.token}"}}')
            assert '"ready"' in await ws.recv()


async def test_the_page_connects_to_its_own_origin_only(sb):
    async with httpx.AsyncClient(base_url=sb.http_url) as http:
        policy = (await http.get("/")).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["connect-src"] == "'self'", policy
    assert "ws:" not in policy and "wss:" not in policy and "*" not in policy
