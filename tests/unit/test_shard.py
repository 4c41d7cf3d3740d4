"""A mailbox shard (actors/shard.py) with the in-memory store and a fake PeerLink: group commit,
outcomes in order, fan-out to local mailboxes and to peer shards, load shedding, typing."""

from __future__ import annotations

import asyncio
import json
import itertools

import pytest

from switchboard.actors.ops import CreateConversation, SendMessage
from switchboard.actors.ring import Ring
from switchboard.actors.shard import MailboxShard, PeerLink
from switchboard.errors import Code, Forbidden, NotFound, Overloaded
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.store import StorageUnavailable

CID = "c_room"
SHARDS = 3
RING = Ring(SHARDS)
# A conversation id that does not exist, owned by shard 0 (the one the tests submit to).
MISSING = next(f"c_nope{i}" for i in range(1000) if RING.conversation_shard(f"c_nope{i}") == 0)


def users_on(shard_index: int, count: int) -> list[str]:
    candidates = (f"user{i}" for i in itertools.count())
    return list(itertools.islice((u for u in candidates if RING.user_shard(u) == shard_index), count))


LOCAL_A, LOCAL_B = users_on(0, 2)  # this shard (index 0) hosts their mailboxes
PEER1 = users_on(1, 2)
PEER2 = users_on(2, 1)
MEMBERS = sorted([LOCAL_A, LOCAL_B, *PEER1, *PEER2])


class FakePeers(PeerLink):
    def __init__(self):
        self.deliveries: list[tuple[int, list]] = []
        self.ephemeral: list[tuple[int, list[str], dict]] = []

    def deliver(self, shard_index, events):
        self.deliveries.append((shard_index, list(events)))

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        self.ephemeral.append((shard_index, list(user_ids), frame))


@pytest.fixture
def peers() -> FakePeers:
    return FakePeers()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def make_shard(store, peers):
    shards = []

    def make(commit_batch_max: int = 512, queue_max: int = 1000) -> MailboxShard:
        shard = MailboxShard(index=0, ring=RING, store=store, peers=peers, max_members=50,
                             commit_batch_max=commit_batch_max, queue_max=queue_max)
        shards.append(shard)
        return shard

    yield make
    for shard in shards:
        await shard.stop()


@pytest.fixture
async def shard(make_shard, peers) -> MailboxShard:
    """A shard whose conversation CID has MEMBERS; the create's deliveries are already cleared."""
    shard = make_shard()
    (outcome,) = await shard.submit([CreateConversation(CID, LOCAL_A, tuple(MEMBERS), "", "local")])
    outcome.unwrap()
    peers.deliveries.clear()
    return shard


def sends(count: int, sender: str = LOCAL_A, start: int = 0) -> list[SendMessage]:
    return [SendMessage(CID, sender, f"k{i}", f"message {i}") for i in range(start, start + count)]


def outbox_cursors(shard: MailboxShard, user_id: str, gateway_id: str = "gw1") -> list[int]:
    return [cursor for user, cursor, _ in shard.mailboxes.outbox(gateway_id).items if user == user_id]


# ---- the send path -----------------------------------------------------------------------------

async def test_many_sends_in_one_call_commit_in_one_batch_with_outcomes_in_order(shard):
    commits_before = shard.commits
    outcomes = await shard.submit(sends(100))
    assert [(o.value["seq"], o.value["client_msg_id"]) for o in outcomes] == [(i + 1, f"k{i}") for i in range(100)]
    assert shard.commits - commits_before == 1
    assert shard.stats()["committed_operations"] == 101  # the create, then the 100 sends


async def test_a_batch_closes_at_commit_batch_max(make_shard):
    shard = make_shard(commit_batch_max=10)
    await shard.submit([CreateConversation(CID, LOCAL_A, (), "", "local")])
    outcomes = await shard.submit(sends(25))
    assert [o.value["seq"] for o in outcomes] == list(range(1, 26))
    assert shard.commits == 1 + 3  # 10 + 10 + 5


async def test_concurrent_submits_share_commits(shard, store):
    commits_before = shard.commits
    results = await asyncio.gather(*(shard.submit(sends(5, start=10 * i)) for i in range(10)))
    seqs = sorted(o.value["seq"] for outcomes in results for o in outcomes)
    assert seqs == list(range(1, 51))
    assert shard.commits - commits_before <= 3
    assert [m.seq for m in store.messages_page(CID, None, None, 100)] == list(range(1, 51))


async def test_refusals_come_back_in_place(shard):
    batch = [*sends(1), SendMessage(CID, "outsider", "x", "hi"), SendMessage(MISSING, LOCAL_A, "y", "hi"),
             *sends(1, start=1)]
    outcomes = await shard.submit(batch)
    assert [type(o.error) if o.error else o.value["seq"] for o in outcomes] == [1, Forbidden, NotFound, 2]


async def test_events_for_peer_shards_go_to_them_grouped_per_shard(shard, peers):
    await shard.submit(sends(2))
    assert sorted(index for index, _ in peers.deliveries) == [1, 2]  # one call per shard per commit
    delivered = {index: [(e.user_id, e.seq) for e in events] for index, events in peers.deliveries}
    assert sorted(delivered[1]) == sorted((u, seq) for u in PEER1 for seq in (1, 2))
    assert delivered[2] == [(PEER2[0], 1), (PEER2[0], 2)]
    assert all(e.cursor > 0 for _, events in peers.deliveries for e in events)


async def test_events_for_local_users_reach_their_mailbox_outbox(shard, peers):
    attached = await shard.attach("gw1", LOCAL_B, since=None)
    assert attached.head == 1  # the member/joined event of the create
    await shard.submit(sends(3))
    assert outbox_cursors(shard, LOCAL_B) == [2, 3, 4]
    assert [json.loads(text)["message"]["seq"] for _, _, text in shard.mailboxes.outbox("gw1").items] == [1, 2, 3]
    assert outbox_cursors(shard, LOCAL_A) == []  # not attached: durable only
    assert all(index != 0 for index, _ in peers.deliveries)


async def test_too_many_queued_operations_are_refused_overloaded(make_shard, store):
    shard = make_shard(queue_max=10)
    await shard.submit([CreateConversation(CID, LOCAL_A, (), "", "local")])
    outcomes = await shard.submit(sends(11))
    assert [o.error.code for o in outcomes] == [Code.OVERLOADED] * 11
    assert store.messages_page(CID, None, None, 100) == []
    assert [o.value["seq"] for o in await shard.submit(sends(10))] == list(range(1, 11))


async def test_an_outage_answers_overloaded_and_the_shard_recovers(shard, store):
    store.fail_with = StorageUnavailable("database went away")
    assert [type(o.error) for o in await shard.submit(sends(3))] == [Overloaded] * 3
    store.fail_with = None
    assert [o.value["seq"] for o in await shard.submit(sends(3))] == [1, 2, 3]


async def test_a_bug_in_a_commit_fails_that_batch_as_internal_and_the_shard_keeps_serving(shard):
    real_commit = shard.sequencer.commit

    def broken_once(operations, *_):
        shard.sequencer.commit = real_commit
        raise RuntimeError("boom")

    shard.sequencer.commit = broken_once
    assert [o.error.code for o in await shard.submit(sends(2))] == [Code.INTERNAL] * 2
    assert [o.value["seq"] for o in await shard.submit(sends(2))] == [1, 2]


# ---- typing ------------------------------------------------------------------------------------

async def test_typing_reaches_only_the_other_members(shard, peers):
    await shard.attach("gw1", LOCAL_A, since=None)
    await shard.attach("gw1", LOCAL_B, since=None)
    outcome = await shard.typing(CID, LOCAL_A)
    frame = {"type": "typing", "conversation_id": CID, "user_id": LOCAL_A}
    assert outcome.error is None
    assert shard.mailboxes.outbox("gw1").items == [(LOCAL_B, None, json.dumps(frame, separators=(",", ":")))]
    assert sorted((index, sorted(users)) for index, users, _ in peers.ephemeral) == [(1, sorted(PEER1)), (2, PEER2)]
    assert all(sent == frame for _, _, sent in peers.ephemeral)


async def test_typing_by_a_non_member_is_forbidden_and_reaches_no_one(shard, peers):
    await shard.attach("gw1", LOCAL_B, since=None)
    outcome = await shard.typing(CID, "outsider")
    assert outcome.error.code == Code.FORBIDDEN
    assert (shard.mailboxes.outbox("gw1").items, peers.ephemeral) == ([], [])


async def test_typing_in_an_unknown_conversation_is_not_found(shard):
    assert (await shard.typing("c_nope", LOCAL_A)).error.code == Code.NOT_FOUND


async def test_typing_during_an_outage_is_overloaded(shard, make_shard, store):
    restarted = make_shard()  # nothing cached: it must read the conversation
    store.fail_with = StorageUnavailable("database went away")
    assert (await restarted.typing(CID, LOCAL_A)).error.code == Code.OVERLOADED


# ---- a planned move --------------------------------------------------------------------------

async def test_drain_waits_until_every_accepted_send_is_committed_and_answered(shard, store):
    import threading

    gate = threading.Event()
    apply = store.apply

    def slow_apply(batch, timeout_s=None):  # the writer thread waits here until the gate opens
        gate.wait(5)
        apply(batch, timeout_s)

    store.apply = slow_apply
    accepted = asyncio.create_task(shard.submit(sends(3)))
    await asyncio.sleep(0.05)
    assert not await shard.drain(0.1)  # still committing: not drained within the time given
    draining = asyncio.create_task(shard.drain(5))
    await asyncio.sleep(0.05)
    assert not draining.done()
    gate.set()
    assert await draining
    assert accepted.done() and [o.value["seq"] for o in accepted.result()] == [1, 2, 3]
