"""A replica's socket capacity (issue #11 point 3, the first half), on the real platform: a
gateway application of its own, deployed beside the shared one with room for three sockets.
Past them a socket is refused at once with 1013 instead of hanging in its handshake, HTTP calls
are still answered at once (sockets never take the slots HTTP needs), the held sockets still get
their messages, and a closed socket's place is free again."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from helpers import open_raw_ws, open_ws
from ray import serve
from switchboard.client import SessionClosed
from switchboard.gateway.app import gateway_application
from switchboard.local import wait_healthy

pytestmark = pytest.mark.integration

APP = "capacity-test"
PREFIX = f"/{APP}"
SOCKETS = 3
PROMPT_S = 2.0  # "at once": a refusal or an HTTP answer well inside any client's timeout


@pytest.fixture(scope="module")
def small_gateway(sb):
    settings = sb.settings.replace(sockets_per_replica=SOCKETS, target_sockets_per_replica=SOCKETS,
                                   min_replicas=1, max_replicas=1)
    serve.run(gateway_application(settings, sb.database_url), name=APP, route_prefix=PREFIX, blocking=False)
    wait_healthy(sb.http_url + PREFIX)
    yield sb.http_url + PREFIX, sb.ws_url.removesuffix("/v1/ws") + PREFIX + "/v1/ws"
    serve.delete(APP)


async def test_past_its_sockets_a_replica_refuses_at_once_and_http_is_still_answered(small_gateway, new_user):
    http_url, ws_url = small_gateway
    users = [new_user("cap") for _ in range(SOCKETS + 1)]
    sender = new_user("sender")
    cid = (await sender.api.create_ok([user.user_id for user in users]))["conversation_id"]
    held = [await open_ws(ws_url, user.user_id, user.token) for user in users[:SOCKETS]]

    started = time.monotonic()
    extra = await open_raw_ws(ws_url)
    assert await extra.wait_closed(timeout=PROMPT_S) == 1013
    assert time.monotonic() - started < PROMPT_S
    assert "retry" in (extra.close_reason or "")

    async with httpx.AsyncClient(base_url=http_url, timeout=PROMPT_S) as http:
        started = time.monotonic()
        answers = await asyncio.gather(*(http.get("/v1/health") for _ in range(20)))
        assert {answer.status_code for answer in answers} == {200}
        listed = await http.get("/v1/conversations", headers={"Authorization": f"Bearer {users[0].token}"})
        assert listed.status_code == 200 and cid in [c["conversation_id"] for c in listed.json()["conversations"]]
        assert time.monotonic() - started < PROMPT_S

    message = await sender.api.post_ok(cid, "to the sockets held")
    for ws in held:
        assert (await ws.next_of_type("message"))["message"] == message

    await held[0].close()
    deadline = time.monotonic() + 10
    while True:  # the place is free once the server has seen the close
        try:
            again = await open_ws(ws_url, users[SOCKETS].user_id, users[SOCKETS].token, timeout=PROMPT_S)
            break
        except (AssertionError, SessionClosed):  # closed 1013 before `ready`: not yet
            assert time.monotonic() < deadline, "a closed socket's place was never freed"
            await asyncio.sleep(0.1)
    await again.close()
    for ws in held[1:]:
        await ws.close()
