"""No client can wedge a shard or a replica (issue #9 point 3), on the real platform: every frame
type counts against a per-connection budget (a flood is refused, then closed 4008), typing and
acks are coalesced, unknown conversations cost no query per send, creations and membership
changes are rate limited per user, the conversation list comes in pages, and a user's sockets
are capped.
"""

from __future__ import annotations

import asyncio

from helpers import assert_error, platform_actor, unique_id

from switchboard.actors import registry


async def shard_stats(sb, region: str = "local") -> list[dict]:
    router = platform_actor(sb, registry.router_name(region))
    return await router.stats.remote()


async def test_a_ping_flood_is_refused_then_closed_4008_and_others_are_unaffected(sb, new_user):
    flooder, bystander = new_user("flood"), new_user("calm")
    conversation = await bystander.api.create_ok([flooder.user_id])
    ws = await flooder.ws()
    calm = await bystander.ws()
    try:
        for index in range(2_000):
            await ws.send_json({"type": "ping", "nonce": str(index)})
    except Exception:
        pass  # the server closed the socket mid-flood
    assert await ws.wait_closed(timeout=15) == 4008
    refusals = [f for f in ws.frames if f["type"] == "error"]
    assert refusals and {f["code"] for f in refusals} == {"rate_limited"}
    assert all(f.get("retry_after_ms", 0) > 0 for f in refusals)
    pongs = [f for f in ws.frames if f["type"] == "pong"]
    assert sb.settings.frame_burst <= len(pongs) < 2_000
    assert (await calm.send_and_wait(conversation["conversation_id"], "still fine"))["type"] == "sent"


async def test_typing_is_coalesced_per_connection(new_user):
    alice, bob = new_user("typer"), new_user("watcher")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    typer, watcher = await alice.ws(), await bob.ws()
    for _ in range(60):
        await typer.send_json({"type": "typing", "conversation_id": cid})
    await typer.ping()
    heard = await watcher.quiet(lambda f: f["type"] == "typing", seconds=1.0)
    assert 1 <= len(heard) <= 3, heard  # one per second of typing, not sixty
    assert not [f for f in typer.frames if f["type"] == "error"]


async def test_acks_are_coalesced_and_never_answered(new_user):
    alice, bob = new_user("acker"), new_user("sender")
    cid = (await bob.api.create_ok([alice.user_id]))["conversation_id"]
    await bob.api.post_ok(cid, "one")
    ws = await alice.ws(since=0)
    for _ in range(150):
        await ws.send_json({"type": "ack", "cursor": 2})
    assert (await ws.ping())["type"] == "pong"
    assert not [f for f in ws.frames if f["type"] == "error"]


async def test_sends_to_an_unknown_conversation_cost_no_query_each(sb, new_user):
    alice = new_user("guesser")
    ws = await alice.ws()
    ghost = "c_" + unique_id("ghost").replace("-", "_")
    before = sum(s["conversation_loads"] for s in await shard_stats(sb))
    for _ in range(30):
        answer = await ws.send_and_wait(ghost, "anyone?")
        assert (answer["type"], answer["code"]) == ("error", "not_found")
        await asyncio.sleep(0.25)  # one send a batch: each would be a lookup without the miss cache
    after = sum(s["conversation_loads"] for s in await shard_stats(sb))
    assert after - before <= 1, (before, after)


async def test_conversation_creation_is_rate_limited_per_user(sb, new_user):
    busy, other = new_user("creator"), new_user("friend")
    answers = await asyncio.gather(*(busy.api.create([other.user_id]) for _ in range(sb.settings.membership_burst + 10)))
    statuses = [response.status_code for response in answers]
    assert statuses.count(201) <= sb.settings.membership_burst + 1
    refused = [response for response in answers if response.status_code == 429]
    assert refused, statuses
    error = assert_error(refused[0], 429, "rate_limited")
    assert error["retry_after_ms"] > 0 and refused[0].headers["retry-after"]
    assert (await other.api.create([busy.user_id])).status_code == 201  # someone else is not limited


async def test_the_conversation_list_comes_in_pages(new_user):
    owner = new_user("pager")
    friends = [new_user("f") for _ in range(7)]
    made = [(await owner.api.create_ok([friend.user_id]))["conversation_id"] for friend in friends]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await owner.api.request("GET", "/v1/conversations", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["conversations"]) <= 3
        seen += [c["conversation_id"] for c in body["conversations"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made and pages == 3
    assert [c.conversation_id for c in await owner.api.sdk.list_conversations()] == made
    assert_error(await owner.api.request("GET", "/v1/conversations", params={"cursor": "nonsense"}), 400, "invalid")
    assert_error(await owner.api.request("GET", "/v1/conversations", params={"limit": 10_000}), 400, "invalid")


async def test_a_users_sockets_are_capped_and_one_more_is_closed_4008(sb, new_user):
    alice = new_user("devices")
    sockets = [await alice.ws() for _ in range(sb.settings.sockets_per_user)]
    extra = await alice.ws(wait_ready=False)
    assert await extra.wait_closed(timeout=10) == 4008
    await sockets[0].close()
    await asyncio.sleep(0.5)  # the detach reaches the shard
    again = await alice.ws()  # a place freed: a new socket is taken
    assert again.ready is not None
