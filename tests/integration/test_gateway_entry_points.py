"""Any gateway serves anyone (issue #10, point 3), on the shared platform's regions ("local",
"eu"): each region has its own entry point (its own Serve application and replica, at
`/regions/<region>`; the default region's also at `/`), a user of eu on eu's gateway stays in
eu, and users homed in either region, connected to either gateway, in one conversation get every
message live, once, in order, and resume with `since` wherever they reconnect."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from test_home_region_traffic import GATEWAY_TRAFFIC_KINDS, SHARD_TRAFFIC_KINDS, grown, snapshot, talk_then_resume

pytestmark = pytest.mark.integration

EU_APP = "switchboard-eu"


async def test_every_region_has_its_own_entry_point(sb):
    async with httpx.AsyncClient(base_url=sb.http_url, timeout=10) as http:
        for path, region in (("", "local"), ("/regions/local", "local"), ("/regions/eu", "eu")):
            assert (await http.get(f"{path}/v1/health")).json() == {"status": "ok"}, path
            listed = (await http.get(f"{path}/v1/gateways")).json()
            assert listed["region"] == region, path  # answered by that region's own replica
            assert [g["region"] for g in listed["gateways"]] == [region, "eu" if region == "local" else "local"]
        assert (await http.get("/regions/ap/v1/health")).status_code == 404  # no such region


async def test_eu_users_on_eu_gateway_never_call_another_region(sb, new_user):
    eve, frank = new_user("eve", region="eu", gateway="eu"), new_user("frank", region="eu", gateway="eu")
    gateway_before, shards_before = await snapshot(sb, EU_APP)

    cid = (await eve.api.create_ok([frank.user_id]))["conversation_id"]
    assert cid.startswith("c_eu_")
    await talk_then_resume(eve, frank, cid, 4, "in eu")

    gateway_after, shards_after = await snapshot(sb, EU_APP)
    assert grown(gateway_before, gateway_after, (*GATEWAY_TRAFFIC_KINDS, "stream", "heartbeat")) == {}
    for region in sb.settings.regions:
        assert grown(shards_before[region], shards_after[region], SHARD_TRAFFIC_KINDS) == {}, region


async def test_anyone_on_any_gateway_gets_every_message_live_once_and_resumes(sb, new_user):
    # Homed in local and eu, each on the other region's gateway and on its own.
    alice = new_user("alice", gateway="eu")             # home local, on eu's gateway
    eve = new_user("eve", region="eu")                  # home eu, on local's gateway
    bob = new_user("bob")                               # home local, at home
    frank = new_user("frank", region="eu", gateway="eu")  # home eu, at home
    people = [alice, eve, bob, frank]
    cid = (await alice.api.create_ok([p.user_id for p in people[1:]]))["conversation_id"]
    assert cid.startswith("c_local_")  # sequenced in its creator's region, whatever her gateway
    sockets = {person.user_id: await person.ws() for person in people}
    await asyncio.sleep(0.3)  # every socket attached before the first send

    local_before, shards_before = await snapshot(sb)
    eu_before, _ = await snapshot(sb, EU_APP)
    for person in people:  # each sends once, on their own gateway
        assert (await sockets[person.user_id].send_and_wait(cid, f"from {person.user_id}"))["type"] == "sent"
    for person in people:
        frames = await sockets[person.user_id].take_events(len(people), kind="message")
        messages = [frame["message"] for frame in frames]
        assert [m["body"] for m in messages] == [f"from {p.user_id}" for p in people], person.user_id
        assert [m["seq"] for m in messages] == list(range(1, len(people) + 1))  # committed once each
        assert await sockets[person.user_id].quiet(lambda f: f["type"] == "message") == []  # no duplicate
    history = await bob.api.history_ok(cid)
    assert [m["body"] for m in history] == [f"from {p.user_id}" for p in people]

    # Eve (home eu) resumes on local's gateway with `since`, then moves home and resumes again.
    eve_ws = sockets[eve.user_id]
    cursor = eve_ws.events()[-1]["cursor"]
    await eve_ws.close()
    missed = await bob.api.post_ok(cid, "while eve was away")
    again = await eve.ws(since=cursor)
    assert [f["message"] for f in again.replayed] == [missed] and again.ready["cursor"] == cursor + 1
    await again.close()
    later = await frank.api.post_ok(cid, "eve moved home")
    home = await eve.ws(since=cursor + 1, gateway="eu")
    assert [f["message"] for f in home.replayed] == [later] and home.ready["cursor"] == cursor + 2
    await home.close()

    local_after, shards_after = await snapshot(sb)
    eu_after, _ = await snapshot(sb, EU_APP)
    # The hops of docs/ARCHITECTURE.md "Cross-region hops per message": a foreign gateway's send
    # is one call to the sequencer's region (the answer rides back on it) and a commit is handed
    # to each other region once: one call per destination shard there (eve and frank may be on
    # either of eu's two shards).
    eu_gateway = grown(eu_before, eu_after, ("submit",))
    # alice's and frank's sends and frank's post, all to local's sequencer: a batch each at most
    assert 1 <= eu_gateway.get("submit", 0) <= 3, eu_gateway
    local_out = grown(shards_before["local"], shards_after["local"], ("deliver",))
    commits = len(people) + 2
    assert 1 <= local_out.get("deliver", 0) <= commits * sb.settings.shards_per_region, local_out
    eu_out = grown(shards_before["eu"], shards_after["eu"], ("deliver",))
    assert eu_out == {}, eu_out  # eu sequences nothing here: its shards only receive
    assert grown(local_before, local_after, ("submit",)) == {}  # bob's and eve's sends stay in local
