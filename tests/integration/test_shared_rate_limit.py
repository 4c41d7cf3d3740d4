"""The per-user send rate holds across gateway replicas (issue #9 point 3): a user with sockets on
two replicas gets the same rate as with one (within 10%). The test scales the shared platform's
gateway to two replicas (a light Serve update: no replica restarts), then back to one.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import platform_actor, unique_id
from ray import serve

from switchboard.actors import registry
from switchboard.actors.ring import Ring
from switchboard.gateway.app import APP_NAME, DEPLOYMENT_NAME, deploy

FLOOD_S = 6.0
SENDS_PER_S = 20  # per socket: well past the 5/s rate, never 100 refusals in a row (no 4008)


def running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return status.replica_states.get("RUNNING", 0)


async def wait_replicas(count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while running_replicas() != count:
        assert time.monotonic() < deadline, f"{running_replicas()} replicas, not {count}"
        await asyncio.sleep(0.5)


@pytest.fixture
async def two_replicas(sb):
    deploy(sb.settings, sb.database_url, replicas=(2, 2))
    await wait_replicas(2)
    yield
    deploy(sb.settings, sb.database_url)
    await wait_replicas(1)


async def sockets_on_gateways(sb, user, count: int):
    """Sockets of `user` until they sit on `count` different replicas (HAProxy spreads them)."""
    shard = platform_actor(sb, registry.shard_name("local", Ring(sb.settings.shards_per_region).user_shard(user.user_id)))
    sockets = []
    for _ in range(sb.settings.sockets_per_user):
        sockets.append(await user.ws())
        if len(await shard.sockets_of.remote(user.user_id)) >= count:
            return sockets
    pytest.fail(f"{len(sockets)} sockets of one user all landed on fewer than {count} replicas")


async def accepted_in(sockets, cid: str, seconds: float) -> int:
    """Send from every socket at SENDS_PER_S for `seconds`; how many were committed."""
    answers = []

    async def pace(ws):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            answers.append(asyncio.ensure_future(ws.send_and_wait(cid, "x", unique_id(), timeout=20)))
            await asyncio.sleep(1 / SENDS_PER_S)

    await asyncio.gather(*(pace(ws) for ws in sockets))
    frames = await asyncio.gather(*answers)
    assert {f["type"] for f in frames} <= {"sent", "error"} and all(
        f.get("code") in (None, "rate_limited") for f in frames), {f.get("code") for f in frames}
    return sum(1 for f in frames if f["type"] == "sent")


async def test_a_user_on_two_replicas_gets_the_same_rate_as_on_one(sb, new_user, two_replicas):
    settings = sb.settings
    expected = settings.send_burst + settings.send_rate_per_s * FLOOD_S
    one, two, friend = new_user("one-replica"), new_user("two-replicas"), new_user("friend")
    cid_one = (await one.api.create_ok([friend.user_id]))["conversation_id"]
    cid_two = (await two.api.create_ok([friend.user_id]))["conversation_id"]

    single = [await one.ws()]
    on_one = await accepted_in(single, cid_one, FLOOD_S)
    spread = await sockets_on_gateways(sb, two, 2)
    on_two = await accepted_in(spread, cid_two, FLOOD_S)
    print(f"\nshared send budget: {on_one} sends accepted on one replica, {on_two} on two "
          f"({len(spread)} sockets), expected about {expected:.0f}")
    assert abs(on_two - on_one) <= 0.1 * on_one, (on_one, on_two)
    assert on_two <= expected * 1.1, (on_two, expected)
