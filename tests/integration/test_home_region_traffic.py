"""Home regions on the real platform (issue #10, point 2): a user's mailbox lives on its home
region's shards, a conversation is sequenced in its creator's region, and users of one region
talking among themselves never call another region's actors.

The shared platform has the regions ("local", "eu") on one node and one gateway replica homed in
"local". Cross-region calls are counted where they are made: by the gateway (`cross_region_calls`)
and by each shard (its stats). The gateway's "stream" and "heartbeat" kinds are left out of the
intra-region check: once any eu-homed user connected to this replica, it keeps one delivery stream
(and its heartbeat) open to that eu shard for as long as it runs, whatever traffic follows."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import ray
from ray import serve
from switchboard.actors import registry
from switchboard.protocol import conversation_region

pytestmark = pytest.mark.integration

# What a message, a typing signal, a receipt, a socket or a resume calls on its way.
GATEWAY_TRAFFIC_KINDS = ("submit", "signal", "attach", "attach_many", "replay", "detach")
SHARD_TRAFFIC_KINDS = ("deliver", "deliver_ephemeral")
# Detaches and last deliveries of the test before are fire-and-forget: let them land first.
SETTLE_S = 0.5


async def gateway_calls(app: str = "switchboard") -> Counter:
    """The cross-region calls of a region's gateway replica (its application: entry_points.py)."""
    handle = serve.get_deployment_handle("Gateway", app)
    return Counter(await handle.cross_region_calls.remote())


async def shard_calls(sb) -> dict[str, Counter]:
    """Per region, the sum over its shards of their calls to other regions' actors."""
    totals = {}
    for region in sb.settings.regions:
        router = ray.get_actor(registry.router_name(region), namespace=sb.settings.namespace)
        totals[region] = sum((Counter(stats["cross_region_calls"]) for stats in await router.stats.remote()),
                             Counter())
    return totals


async def snapshot(sb, app: str = "switchboard") -> tuple[Counter, dict[str, Counter]]:
    await asyncio.sleep(SETTLE_S)
    return await gateway_calls(app), await shard_calls(sb)


def grown(before: Counter, after: Counter, kinds) -> dict[str, int]:
    return {kind: after[kind] - before[kind] for kind in kinds if after[kind] != before[kind]}


async def talk_then_resume(sender, receiver, cid: str, sends: int, text: str) -> None:
    """What two users of a conversation do: sends received live, a typing signal, a receipt, and
    the receiver resuming from 0 to the same messages."""
    sender_ws, receiver_ws = await sender.ws(), await receiver.ws()
    for n in range(sends):
        assert (await sender_ws.send_and_wait(cid, f"{text} {n}"))["type"] == "sent"
    live = await receiver_ws.take_events(sends, kind="message")
    await receiver_ws.send_json({"type": "typing", "conversation_id": cid})
    await sender_ws.next_of_type("typing")
    assert (await receiver.api.read(cid, sends)).status_code == 200
    await receiver_ws.close()
    back = await receiver.ws(since=0)
    assert [f["message"] for f in back.replayed if f["type"] == "message"] == [f["message"] for f in live]
    await back.close()
    await sender_ws.close()


async def test_users_of_one_region_never_call_another_region(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")  # no region claim: the default, "local"
    gateway_before, shards_before = await snapshot(sb)

    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    assert conversation_region(cid, sb.settings.regions, sb.settings.region) == "local"
    await talk_then_resume(alice, bob, cid, 5, "hello")

    gateway_after, shards_after = await snapshot(sb)
    assert grown(gateway_before, gateway_after, GATEWAY_TRAFFIC_KINDS) == {}
    for region in sb.settings.regions:
        assert grown(shards_before[region], shards_after[region], SHARD_TRAFFIC_KINDS) == {}, region


async def test_a_user_homed_abroad_is_served_by_this_regions_gateway(sb, new_user, store):
    eve = new_user("eve", region="eu")  # homed in eu, connected to the "local" gateway
    alice = new_user("alice")
    gateway_before, shards_before = await snapshot(sb)

    # Eve creates: the conversation is sequenced in eu, and her mailbox is claimed there.
    cid = (await eve.api.create_ok([alice.user_id]))["conversation_id"]
    assert cid.startswith("c_eu_")
    assert conversation_region(cid, sb.settings.regions, sb.settings.region) == "eu"
    eve_ws, alice_ws = await eve.ws(), await alice.ws()
    sends = 4
    for n in range(sends):
        assert (await eve_ws.send_and_wait(cid, f"from eu {n}"))["type"] == "sent"
    live = await alice_ws.take_events(sends, kind="message")
    assert [event["message"]["body"] for event in live] == [f"from eu {n}" for n in range(sends)]

    # Alice (home: local) answers in eu's conversation; Eve receives it live, then resumes.
    answer = await alice.api.post_ok(cid, "from local")
    got = await eve_ws.next(lambda f: f["type"] == "message" and f["message"]["seq"] == answer["seq"])
    last = got["cursor"]
    await eve_ws.close()
    missed = await alice.api.post_ok(cid, "while eve was away")
    back = await eve.ws(since=last)
    assert [event["message"] for event in back.replayed] == [missed]
    assert back.ready["cursor"] == last + 1
    await back.close()
    await alice_ws.close()

    assert await asyncio.to_thread(store.mailbox_regions, [eve.user_id, alice.user_id]) == {
        eve.user_id: "eu", alice.user_id: "local"}

    gateway_after, shards_after = await snapshot(sb)
    gateway_grew = grown(gateway_before, gateway_after, GATEWAY_TRAFFIC_KINDS)
    # Eve's frames went to eu's sequencer (one call per batch), her socket attached to eu's shard.
    # (A short resume's replay rides on the attach's answer.)
    assert gateway_grew.get("submit", 0) >= 1 and gateway_grew.get("attach", 0) >= 2, gateway_grew
    # eu's sequencer hands Alice's events to local's shards, local's hands Eve's to eu's:
    # at most one call per destination region per commit: the create, the sends and two posts.
    eu_out = grown(shards_before["eu"], shards_after["eu"], SHARD_TRAFFIC_KINDS)
    assert 1 <= eu_out.get("deliver", 0) <= 1 + sends + 2, eu_out
