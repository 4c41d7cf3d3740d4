"""A shard's checkpoint end to end on the in-memory store: MailboxShard.checkpoint() written while
commits go on, and a new shard (a restart) that restores it, replays only what came after it and
goes on numbering; live mailboxes restored with their gateways, confirmed or dropped by re-attach."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from switchboard.actors.checkpoint import MailboxRecord
from switchboard.actors.mailbox import MailboxHost
from switchboard.actors.ops import AddMember, CreateConversation, SendMessage
from switchboard.actors.ring import Ring
from switchboard.actors.shard import MailboxShard, PeerLink
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.models import RECEIPT, MailboxEvent, WriteBatch
from switchboard.storage.store import StorageUnavailable

CID = "c_room"
RING = Ring(2)
OWNER = "shard:test:0"


def users_on(shard_index: int, count: int) -> list[str]:
    candidates = (f"user{i}" for i in itertools.count())
    return list(itertools.islice((u for u in candidates if RING.user_shard(u) == shard_index), count))


ALICE, BOB = users_on(0, 2)  # their mailboxes are on shard 0, the one under test
PEER = users_on(1, 1)[0]


class NoPeers(PeerLink):
    def deliver(self, shard_index, events):
        pass

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        pass


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def make_shard(store):
    shards = []

    def make(ring: Ring = RING, checkpoint_interval_s: float = 0.0) -> MailboxShard:
        shard = MailboxShard(index=0, ring=ring, store=store, peers=NoPeers(), max_members=50,
                             commit_batch_max=512, queue_max=10_000, owner=OWNER,
                             checkpoint_interval_s=checkpoint_interval_s)
        shards.append(shard)
        return shard

    yield make
    for shard in shards:
        await shard.stop()


def sends(keys, sender: str = ALICE) -> list[SendMessage]:
    return [SendMessage(CID, sender, key, f"body {key}") for key in keys]


async def committed(shard: MailboxShard, operations) -> list[dict]:
    return [outcome.unwrap() for outcome in await shard.submit(operations)]


def outbox_cursors(shard: MailboxShard, user_id: str, gateway_id: str) -> list[int]:
    return [cursor for user, cursor, _ in shard.mailboxes.outbox(gateway_id).items if user == user_id]


@pytest.fixture
async def running(make_shard) -> MailboxShard:
    """A shard sequencing CID (ALICE, BOB, PEER) with 3 messages; ALICE has 2 sockets on gw1."""
    shard = make_shard()
    await committed(shard, [CreateConversation(CID, ALICE, (BOB, PEER), "", "local")])
    await committed(shard, sends(["k0", "k1", "k2"]))
    await shard.attach("gw1", ALICE, since=None, socket_id=1)
    await shard.attach("gw1", ALICE, since=None, socket_id=2)
    return shard


# ---- the shard -----------------------------------------------------------------------------------

async def test_a_restarted_shard_loads_its_checkpoint_and_replays_only_what_came_after(running, make_shard, store):
    figures = await running.checkpoint()
    assert (figures["conversations"], figures["recent_sends"], figures["mailboxes"]) == (1, 3, 1)
    after = await committed(running, sends(["after-0", "after-1"]) + [AddMember(CID, ALICE, "dave")])

    restarted = make_shard()
    restored = restarted.restore()
    assert restored["loaded"] and restored["taken_at"] == figures["taken_at"]
    assert (restored["current"], restored["reloaded"], restored["replayed_messages"]) == (0, 1, 2)
    assert restored["mailbox_mailboxes"] == 1
    # ALICE's head moved after the checkpoint by the 2 messages and dave's join: 3 events to replay.
    assert restored["mailbox_events_after_watermark"] == 3

    retry = (await restarted.submit(sends(["after-1"])))[0]
    assert retry.created is False and retry.unwrap() == after[1]
    (next_message,) = await committed(restarted, sends(["k-next"]))
    assert next_message["seq"] == 6
    stats = restarted.stats()
    assert (stats["conversation_loads"], stats["replans"]) == (0, 0)
    assert {e.user_id for e in store.events_after("dave", 0, 10**9, 100)} == {"dave"}


async def test_without_a_checkpoint_the_shard_starts_empty_and_loads_lazily(running, make_shard):
    restarted = make_shard()
    assert restarted.restore() == {"loaded": False}
    (message,) = await committed(restarted, sends(["k3"]))
    assert message["seq"] == 4
    assert restarted.stats()["conversation_loads"] == 1


@pytest.mark.parametrize("shard_count", [1, 3, 4, 8])
async def test_a_checkpoint_of_another_shard_count_restores_what_the_shard_still_owns(running, make_shard, shard_count):
    await running.checkpoint()
    ring = Ring(shard_count)
    keeps_conversation, keeps_alice = ring.conversation_shard(CID) == 0, ring.user_shard(ALICE) == 0
    restarted = make_shard(ring=ring)
    restored = restarted.restore()
    assert restored["loaded"]
    assert restored["moved_away"] == (not keeps_conversation) + (not keeps_alice)
    assert restored["conversations"] == int(keeps_conversation)
    assert restored["mailbox_mailboxes"] == int(keeps_alice)
    assert ("gw1" in restarted.mailboxes.sockets_of(ALICE)) == keeps_alice


def test_the_shard_counts_above_move_the_mailbox_away_and_keep_it():
    counts = [1, 3, 4]
    assert {Ring(n).user_shard(ALICE) == 0 for n in counts} == {True, False}


async def test_an_older_checkpoint_never_replaces_a_newer_one(running, store):
    await running.checkpoint()
    newest = store.load_checkpoint(OWNER)
    store.save_checkpoint(OWNER, newest.taken_at - 1, b"older")
    assert store.load_checkpoint(OWNER) == newest


async def test_a_checkpoint_taken_while_commits_go_on_restores_to_the_committed_state(running, make_shard, store):
    keys = [f"burst-{i}" for i in range(200)]
    batches = [sends(keys[i:i + 10]) for i in range(0, 200, 10)]
    results = await asyncio.gather(*(committed(running, batch) for batch in batches[:10]),
                                   running.checkpoint(),
                                   *(committed(running, batch) for batch in batches[10:]))
    assert isinstance(results[10], dict)

    restarted = make_shard()
    restarted.restore()
    (message,) = await committed(restarted, sends(["after-all"]))
    assert message["seq"] == 3 + 200 + 1
    retries = await restarted.submit(sends(keys))
    assert all(not outcome.created for outcome in retries)
    assert [m.seq for m in store.messages_page(CID, None, 200, 1000)] == list(range(1, 200))
    assert restarted.stats()["replans"] == 0


async def test_the_periodic_checkpoint_is_written_after_changes_and_not_while_idle(make_shard, store):
    shard = make_shard(checkpoint_interval_s=0.02)
    await committed(shard, [CreateConversation(CID, ALICE, (BOB,), "", "local")])
    deadline = asyncio.get_running_loop().time() + 5
    while store.load_checkpoint(OWNER) is None:
        assert asyncio.get_running_loop().time() < deadline, "no periodic checkpoint"
        await asyncio.sleep(0.01)
    first = store.load_checkpoint(OWNER)
    await asyncio.sleep(0.2)  # ten intervals, nothing changed
    assert store.load_checkpoint(OWNER) == first
    await committed(shard, sends(["k0"]))
    while store.load_checkpoint(OWNER) == first:
        assert asyncio.get_running_loop().time() < deadline, "no checkpoint after a change"
        await asyncio.sleep(0.01)


# ---- live mailboxes --------------------------------------------------------------------------------

async def run_now(function, *args):
    return function(*args)


def receipts(store: MemoryStore, user_id: str, count: int) -> None:
    events = [MailboxEvent(user_id, RECEIPT, CID, {"conversation_id": CID, "user_id": BOB, "seq": i})
              for i in range(count)]
    store.apply(WriteBatch(events=events))


@pytest.fixture
def host(store) -> MailboxHost:
    return MailboxHost(store, run_blocking=run_now)


def restore_host(host: MailboxHost, store: MemoryStore, records, gateways, now=100.0) -> dict:
    heads = store.mailbox_heads([record.user_id for record in records])
    return host.restore(records, gateways, heads, now=now, grace_s=30.0)


async def test_restored_mailboxes_are_live_at_their_stored_head_before_any_reattach(host, store):
    receipts(store, ALICE, 5)  # the checkpoint said head 3; two more committed since
    counts = restore_host(host, store, [MailboxRecord(ALICE, 3, {"gw1": [1, 2]})], ["gw1"])
    assert counts == {"mailboxes": 1, "gateways": 1, "events_after_watermark": 2}
    receipts(store, ALICE, 1)
    host.deliver(store.events_after(ALICE, 5, 6, 10))
    assert [cursor for _, cursor, _ in host.outbox("gw1").items] == [6]


async def test_reattaching_at_the_head_needs_no_query(host, store):
    receipts(store, ALICE, 4)
    restore_host(host, store, [MailboxRecord(ALICE, 4, {"gw1": [1]})], ["gw1"])
    store.fail_with = StorageUnavailable("down")
    result = await host.attach("gw1", ALICE, since=4)
    assert (result.head, result.events, result.resync_required) == (4, [], False)


async def test_the_gateways_reattaches_replace_the_restored_sockets(host, store):
    restore_host(host, store, [MailboxRecord(ALICE, 0, {"gw1": [1, 2]})], ["gw1"])
    await host.attach("gw1", ALICE, since=0, socket_id=1)
    await host.attach("gw1", ALICE, since=0, socket_id=2)
    await host.attach("gw1", ALICE, since=0, socket_id=2)  # the same socket again: still two
    host.detach("gw1", ALICE, socket_id=1)
    assert host.online_users() == 1
    host.detach("gw1", ALICE, socket_id=2)
    assert host.online_users() == 0  # exactly two sockets, not the restored two plus two


async def test_restored_sockets_never_reattached_are_dropped_after_the_grace(host, store):
    records = [MailboxRecord(ALICE, 0, {"gw1": [1]}), MailboxRecord(BOB, 0, {"gw1": [2]})]
    restore_host(host, store, records, ["gw1"], now=100.0)
    await host.attach("gw1", ALICE, since=0)  # gw1 still holds ALICE's socket, not BOB's
    assert host.expire_restored(now=129.0) == 0
    assert host.expire_restored(now=131.0) == 1
    assert host.online_users() == 1
    host.detach("gw1", ALICE)
    assert host.online_users() == 0


async def test_restored_gateways_get_a_fresh_lease_and_a_dead_one_expires(host, store):
    restore_host(host, store, [MailboxRecord(ALICE, 0, {"gw-dead": [1]})], ["gw-dead"], now=100.0)
    assert host.expire_gateways(now=105.0, lease_s=6.0) == []
    assert host.expire_gateways(now=107.0, lease_s=6.0) == ["gw-dead"]
    assert host.online_users() == 0


async def test_the_snapshot_holds_live_mailboxes_and_gateways(running):
    mailboxes, gateways = running.mailboxes.snapshot()
    assert mailboxes == [MailboxRecord(ALICE, 4, {"gw1": [1, 2]})]  # joined, then 3 messages
    assert gateways == ["gw1"]


# ---- re-attaching many sockets in one call ------------------------------------------------------

class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def mailbox_head(self, user_id):
        self.calls.append("mailbox_head")
        return super().mailbox_head(user_id)

    def mailbox_heads(self, user_ids):
        self.calls.append("mailbox_heads")
        return super().mailbox_heads(user_ids)


async def test_attach_many_loads_every_missing_head_in_one_query_and_answers_in_order():
    store = CountingStore()
    host = MailboxHost(store, run_blocking=run_now)
    receipts(store, ALICE, 3)
    receipts(store, BOB, 2)
    results = await host.attach_many("gw1", [(ALICE, 3), (BOB, 0), (PEER, None), (ALICE, None)])
    assert [(r.head, [e.cursor for e in r.events], r.resync_required) for r in results] == [
        (3, [], False), (2, [1, 2], False), (0, [], False), (3, [], False)]
    assert store.calls.count("mailbox_heads") == 1
    host.detach("gw1", ALICE)
    assert host.online_users() == 3  # ALICE's second socket is still there
    for user in (ALICE, BOB, PEER):
        host.detach("gw1", user)
    assert host.online_users() == 0


async def test_attach_many_of_restored_mailboxes_at_their_head_needs_no_query(host, store):
    receipts(store, ALICE, 2)
    receipts(store, BOB, 4)
    records = [MailboxRecord(ALICE, 2, {"gw1": [1]}), MailboxRecord(BOB, 1, {"gw1": [2, 3]})]
    restore_host(host, store, records, ["gw1"])
    store.fail_with = StorageUnavailable("down")
    results = await host.attach_many("gw1", [(ALICE, 2), (BOB, 4), (BOB, 4)])
    assert [r.head for r in results] == [2, 4, 4]
    assert host.expire_restored(now=1e9) == 0  # every restored socket was confirmed


async def test_attach_many_is_all_or_nothing(host, store):
    receipts(store, ALICE, 2)
    store.fail_with = StorageUnavailable("down")
    with pytest.raises(StorageUnavailable):
        await host.attach_many("gw1", [(ALICE, 0), (BOB, None)])
    assert host.online_users() == 0
