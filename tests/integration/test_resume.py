"""Resuming with `since` (guarantee 2), resync_required after retention pruned the gap, and one order
for every member (guarantees 3 and 4)."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
import ray
from helpers import now_ms, unique_id
from switchboard.actors import registry

pytestmark = pytest.mark.integration


def cursors(frames: list[dict]) -> list[int]:
    return [f["cursor"] for f in frames]


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


async def test_resume_with_since_replays_exactly_the_missed_events(new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    phone, laptop = await alice.ws(), await alice.ws()  # the laptop stays online throughout
    for i in range(2):
        await bob.api.post_ok(cid, f"before {i}")
    processed = await phone.take_events(2, kind="message")
    last = processed[-1]["cursor"]
    assert last == 3  # joined, two messages
    await phone.close()

    # Missed while away: five messages, a receipt and a member joining.
    missed_messages = [await bob.api.post_ok(cid, f"missed {i}") for i in range(5)]
    assert (await bob.api.read(cid, 7)).status_code == 200
    assert (await bob.api.add_member(cid, carol.user_id)).status_code == 200
    live = await laptop.take_events(9)  # the laptop saw all of them (2 earlier + 7 missed)
    missed_live = live[2:]

    back = await alice.ws(since=last)
    assert back.replayed == missed_live
    assert cursors(back.replayed) == list(range(last + 1, last + 8))
    assert [f["type"] for f in back.replayed] == ["message"] * 5 + ["receipt", "member"]
    assert [f["message"] for f in back.replayed[:5]] == missed_messages
    assert back.replayed[5] == {"type": "receipt", "cursor": last + 6, "conversation_id": cid,
                                "user_id": bob.user_id, "seq": 7}
    assert back.replayed[6] == {"type": "member", "cursor": last + 7, "conversation_id": cid,
                                "user_id": carol.user_id, "action": "joined"}
    assert back.ready == {"type": "ready", "user_id": alice.user_id, "cursor": last + 7}

    # Live events continue right after the replay, once each.
    after = await bob.api.post_ok(cid, "after resume")
    event = await back.next(lambda f: f["type"] == "message" and f["message"]["seq"] == 8)
    assert event == {"type": "message", "cursor": last + 8, "message": after}
    assert await back.quiet(lambda f: "cursor" in f) == []
    assert strictly_increasing(cursors(back.events()))


async def test_resume_from_head_or_without_since_replays_nothing(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    for i in range(3):
        await bob.api.post_ok(cid, f"m{i}")
    head = 4

    at_head = await alice.ws(since=head)
    assert at_head.replayed == []
    assert at_head.ready == {"type": "ready", "user_id": alice.user_id, "cursor": head}

    fresh = await alice.ws()
    assert fresh.replayed == []
    assert fresh.ready == {"type": "ready", "user_id": alice.user_id, "cursor": head}

    everything = await alice.ws(since=0)
    assert cursors(everything.replayed) == [1, 2, 3, 4]
    assert [f["type"] for f in everything.replayed] == ["member", "message", "message", "message"]
    assert [f["message"]["seq"] for f in everything.replayed[1:]] == [1, 2, 3]
    assert everything.ready["cursor"] == head

    assert await at_head.quiet() == [] and fresh.pending() == []


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason=(
    "prune_mailboxes is global: run against a shared DATABASE_URL it would prune other users' "
    "mailboxes; it runs against the session's own embedded PostgreSQL only"))
async def test_resync_required_when_the_gap_was_pruned(sb, new_user, store):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    for i in range(4):
        await bob.api.post_ok(cid, f"m{i}")
    head = 5  # joined + 4 messages

    # The router's own retention run (7 days or 10,000 events, whichever keeps more) keeps them all.
    router = ray.get_actor(registry.router_name("local"), namespace=sb.settings.namespace)
    await router.prune_mailboxes.remote()
    kept_all = await alice.ws(since=0)
    assert [f["cursor"] for f in kept_all.replayed] == [1, 2, 3, 4, 5]

    # Retention with a tiny window: keep only the newest event of each mailbox.
    pruned = await asyncio.to_thread(store.prune_mailboxes, 0, 1, now_ms() + 1000)
    assert pruned >= 4
    assert (await asyncio.to_thread(store.mailbox_head, alice.user_id)).pruned_through == head - 1

    old = await alice.ws(since=1)
    assert old.replayed == [{"type": "resync_required", "cursor": head}]
    assert old.ready == {"type": "ready", "user_id": alice.user_id, "cursor": head}

    just_behind = await alice.ws(since=head - 2)  # cursor 4 is pruned: still a gap
    assert just_behind.replayed == [{"type": "resync_required", "cursor": head}]

    kept = await alice.ws(since=head - 1)  # everything after cursor 4 is still there
    assert [f["type"] for f in kept.replayed] == ["message"]
    assert kept.replayed[0]["cursor"] == head
    assert kept.replayed[0]["message"]["seq"] == 4
    assert kept.ready["cursor"] == head

    # After a resync the client reloads over HTTP, and live events go on from HEAD.
    assert [m["seq"] for m in await alice.api.history_ok(cid)] == [1, 2, 3, 4]
    later = await bob.api.post_ok(cid, "later")
    assert await old.next_of_type("message") == {"type": "message", "cursor": head + 1, "message": later}


async def test_one_order_for_all_members(new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    cid = (await alice.api.create_ok([bob.user_id, carol.user_id]))["conversation_id"]
    a, b, c = await alice.ws(), await bob.ws(), await carol.ws()
    per_sender = 15

    async def burst(ws, name):
        keys = [unique_id(name) for _ in range(per_sender)]
        for i, key in enumerate(keys):
            await ws.send(cid, f"{name} {i}", key)
        return keys

    alice_keys, bob_keys = await asyncio.gather(burst(a, "a"), burst(b, "b"))
    total = 2 * per_sender
    seen = {name: await ws.take_events(total, kind="message", timeout=15) for name, ws in
            (("alice", a), ("bob", b), ("carol", c))}

    orders = {name: [e["message"]["message_id"] for e in events] for name, events in seen.items()}
    assert orders["alice"] == orders["bob"] == orders["carol"]
    for name, events in seen.items():
        assert [e["message"]["seq"] for e in events] == list(range(1, total + 1)), name
        assert strictly_increasing(cursors(events)), name
        assert cursors(events) == list(range(2, total + 2)), name  # after the joined event at 1
    # Each sender's own messages keep its sending order.
    sent_order = [e["message"]["client_msg_id"] for e in seen["carol"]]
    assert [k for k in sent_order if k in set(alice_keys)] == alice_keys
    assert [k for k in sent_order if k in set(bob_keys)] == bob_keys
    history = await carol.api.history_ok(cid)
    assert [m["message_id"] for m in history] == orders["carol"]
    for ws in (a, b, c):
        assert await ws.quiet(lambda f: f["type"] == "message", seconds=0.2) == []
