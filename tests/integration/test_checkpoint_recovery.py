"""Shards and routers restart from their checkpoints (issue #4, point 3), on the real platform.

A shard killed with ray.kill(no_restart=False) comes back from its checkpoint: it reports (stats()
"restored") exactly the conversations the tables say are still current and the ones changed after
the watermark, whose messages it replayed; it then serves them without loading anything lazily,
answers a retried send from memory, and loses, duplicates or misnumbers nothing. A stale
checkpoint, one whose last_seq is wrong, or an unreadable one only make the start slower.

To know which checkpoint a restarted shard loads, a test pins the one it wants (stored again with
a taken_at in the future, which the periodic checkpoints of the shard cannot replace) and removes
it when done.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
from helpers import ACTOR_RESTART_TIMEOUT_S, platform_actor, restarted_stats, unique_id
from sqlalchemy import text
from switchboard.actors import registry
from switchboard.actors.checkpoint import decode_shard, encode_shard
from switchboard.actors.ring import Ring
from switchboard.local import checkpoint_actors

pytestmark = pytest.mark.integration

REGION = "local"
PIN_AHEAD_MS = 3_600_000
CLOSE_GOING_AWAY = 1001


def actor(sb, name: str):
    return platform_actor(sb, name)


def sequencer_of(sb, cid: str) -> str:
    return registry.shard_name(REGION, Ring(sb.settings.shards_per_region).conversation_shard(cid))


async def kill_and_wait(sb, name: str) -> dict:
    """Kill the shard as a crash would; returns the restarted one's first stats()."""
    before = (await actor(sb, name).stats.remote())["started_at"]
    ray.kill(actor(sb, name), no_restart=False)
    return await restarted_stats(sb, name, before)


@pytest.fixture
def pin(store):
    """pin(owner, state): make `state` the checkpoint a restart of `owner` loads, whatever the
    shard's periodic checkpoints do meanwhile. Unpinned (deleted) after the test."""
    pinned = []

    def pin_state(owner: str, state: bytes) -> None:
        store.save_checkpoint(owner, int(time.time() * 1000) + PIN_AHEAD_MS, state)
        pinned.append(owner)

    yield pin_state
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM checkpoints WHERE owner = ANY(:owners)"), {"owners": pinned})


def expected_restore(store, owner: str) -> tuple[dict, set[str]]:
    """What restoring the stored checkpoint must report, from the tables themselves (read with
    plain SQL): conversations still at their checkpointed version are current; the others were
    changed after it and bring their newer messages. Also returns the changed ids."""
    checkpoint = decode_shard(store.load_checkpoint(owner).state)
    with store.engine.connect() as conn:
        stored = {row[0]: (row[1], row[2]) for row in conn.execute(
            text("SELECT conversation_id, version, last_seq FROM conversations WHERE conversation_id = ANY(:ids)"),
            {"ids": [c.conversation_id for c in checkpoint.conversations]},
        )}
    changed = [c for c in checkpoint.conversations if c.conversation_id in stored
               and stored[c.conversation_id][0] != c.version]
    expected = {
        "loaded": True,
        "taken_at": checkpoint.taken_at,  # when the shard took it (a pinned row's taken_at is later)
        "conversations": len(checkpoint.conversations),
        "current": sum(1 for c in checkpoint.conversations if stored.get(c.conversation_id, (None,))[0] == c.version),
        "reloaded": len(changed),
        "replayed_messages": sum(stored[c.conversation_id][1] - c.last_seq for c in changed),
    }
    return expected, {c.conversation_id for c in changed}


class Reader:
    """bob's device: every event it processes, in order, across reconnects (1001 -> `since`)."""

    def __init__(self, user):
        self.user = user
        self.events: list[dict] = []

    async def connect(self) -> None:
        self.ws = await self.user.ws()
        self.start = self.ws.ready["cursor"]

    async def messages(self, count: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while sum(1 for e in self.events if e["type"] == "message") < count:
            assert time.monotonic() < deadline, f"{len(self.events)} events after {timeout}s"
            try:
                self.events.append(await self.ws.next(lambda f: "cursor" in f and f["type"] != "ready", 5.0))
            except AssertionError:
                if self.ws.closed:
                    assert self.ws.close_code == CLOSE_GOING_AWAY, self.ws.close_code
                    last = self.events[-1]["cursor"] if self.events else self.start
                    self.ws = await self.user.ws(since=last)
                    self.events.extend(self.ws.replayed)
        cursors = [e["cursor"] for e in self.events]
        assert cursors == list(range(self.start + 1, self.start + len(cursors) + 1)), cursors
        return [e["message"] for e in self.events if e["type"] == "message"]


async def test_a_killed_shard_restarts_from_its_checkpoint_and_replays_only_what_came_after(sb, store, new_user, pin):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    owner = sequencer_of(sb, cid)
    reader = Reader(bob)
    await reader.connect()
    committed = [await alice.api.post_ok(cid, f"before the checkpoint {i}") for i in range(3)]

    written = await actor(sb, owner).checkpoint.remote()
    assert written["conversations"] >= 1
    pin(owner, store.load_checkpoint(owner).state)
    assert (await alice.api.add_member(cid, carol.user_id)).status_code in (200, 201)
    retried_key = unique_id()
    committed.append(await alice.api.post_ok(cid, "after the checkpoint 0", retried_key))
    committed.append(await alice.api.post_ok(cid, "after the checkpoint 1"))

    restarted = await kill_and_wait(sb, owner)
    expected, changed = expected_restore(store, owner)
    assert {key: restarted["restored"].get(key) for key in expected} == expected
    assert cid in changed  # carol's join and two messages came after the watermark
    assert expected["replayed_messages"] >= 2
    assert restarted["conversation_loads"] == 0

    # A retry of a send committed after the checkpoint finds its original, from memory.
    retry = await alice.api.post(cid, "after the checkpoint 0", retried_key)
    assert retry.status_code == 200 and retry.json() == committed[3]
    # carol, who joined after the checkpoint, gets the next message: the membership was replayed.
    carol_ws = await carol.ws()
    committed.append(await alice.api.post_ok(cid, "after the restart"))
    assert committed[-1]["seq"] == 6
    assert (await carol_ws.next_of_type("message", timeout=15))["message"] == committed[-1]

    stats = await actor(sb, owner).stats.remote()
    assert (stats["conversation_loads"], stats["replans"]) == (0, 0)
    assert await bob.api.history_ok(cid, limit=200) == committed
    assert await reader.messages(len(committed)) == committed
    assert await reader.ws.quiet(lambda f: f["type"] == "message", seconds=0.3) == []


async def test_a_stale_checkpoint_only_means_more_to_replay(sb, store, new_user, pin):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    owner = sequencer_of(sb, cid)
    committed = [await alice.api.post_ok(cid, "first")]
    await actor(sb, owner).checkpoint.remote()
    stale = store.load_checkpoint(owner).state  # carol not a member yet, last_seq 1
    assert (await alice.api.add_member(cid, carol.user_id)).status_code in (200, 201)
    committed += [await alice.api.post_ok(cid, f"later {i}") for i in range(3)]
    # Newer checkpoints were taken meanwhile; the restart still gets the stale one.
    await actor(sb, owner).checkpoint.remote()
    pin(owner, stale)

    restarted = await kill_and_wait(sb, owner)
    expected, changed = expected_restore(store, owner)
    assert {key: restarted["restored"].get(key) for key in expected} == expected
    assert cid in changed
    carol_ws = await carol.ws()
    committed.append(await alice.api.post_ok(cid, "after the restart"))
    assert committed[-1]["seq"] == 5
    assert (await carol_ws.next_of_type("message", timeout=15))["message"] == committed[-1]
    history = await bob.api.history_ok(cid, limit=200)
    assert history == committed
    assert len({m["message_id"] for m in history}) == 5


async def test_a_checkpoint_with_a_wrong_last_seq_cannot_misnumber(sb, store, new_user, pin):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    owner = sequencer_of(sb, cid)
    committed = [await alice.api.post_ok(cid, f"message {i}") for i in range(3)]
    await actor(sb, owner).checkpoint.remote()
    checkpoint = decode_shard(store.load_checkpoint(owner).state)
    (ours,) = [c for c in checkpoint.conversations if c.conversation_id == cid]
    ours.last_seq = 1  # its version is the stored one, so the restart takes it as current
    pin(owner, encode_shard(checkpoint))

    restarted = await kill_and_wait(sb, owner)
    assert restarted["restored"]["loaded"] is True
    committed.append(await alice.api.post_ok(cid, "after the restart"))
    assert committed[-1]["seq"] == 4  # the commit's fence refused seq 2 and the sequencer reloaded
    assert (await actor(sb, owner).stats.remote())["replans"] == 1
    assert await bob.api.history_ok(cid, limit=200) == committed


async def test_an_unreadable_checkpoint_means_a_lazy_start(sb, store, new_user, pin):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    owner = sequencer_of(sb, cid)
    committed = [await alice.api.post_ok(cid, "before")]
    pin(owner, b"not a checkpoint")

    restarted = await kill_and_wait(sb, owner)
    assert restarted["restored"] == {"loaded": False}
    committed.append(await alice.api.post_ok(cid, "after"))
    assert committed[-1]["seq"] == 2
    assert (await actor(sb, owner).stats.remote())["conversation_loads"] == 1
    assert await bob.api.history_ok(cid) == committed


async def test_a_killed_router_keeps_its_placement_epoch_and_retention_schedule(sb):
    name = registry.router_name(REGION)
    before = await actor(sb, name).info.remote()
    await actor(sb, name).checkpoint.remote()
    ray.kill(actor(sb, name), no_restart=False)
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    while True:
        try:
            after = await asyncio.wait_for(actor(sb, name).info.remote(), 10)
            if after["started_at"] != before["started_at"]:
                break
        except Exception as error:
            assert time.monotonic() < deadline, f"router not back: {error!r}"
        assert time.monotonic() < deadline, "router not restarted"
        await asyncio.sleep(0.2)
    assert after["restored"] is True
    assert (after["shard_names"], after["epoch"]) == (before["shard_names"], before["epoch"])
    # Retention stays due an interval after its last run: not re-run now, not postponed.
    assert after["retention_last_run"] == before["retention_last_run"]


async def test_stopping_checkpoints_every_shard_and_router_first(sb, store):
    names = [registry.router_name(region) for region in sb.settings.regions]
    names += [registry.shard_name(region, i) for region in sb.settings.regions
              for i in range(sb.settings.shards_per_region)]
    started_ms = int(time.time() * 1000)
    await asyncio.to_thread(checkpoint_actors, sb.settings, names)  # what stop_platform runs before the kills
    for name in names:
        stored = store.load_checkpoint(name)
        assert stored is not None and stored.taken_at >= started_ms, name
