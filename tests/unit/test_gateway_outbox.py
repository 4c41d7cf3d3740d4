"""Deliveries waiting for one gateway replica (actors/gateway_outbox.py GatewayOutbox): overflow by
count or by bytes drops everything, sets `overflowed`, ignores later puts and wakes the taker. And,
on a MailboxShard (actors/shard.py) with the in-memory store and fake peers: a replica's stream
ends when its outbox overflows and the shard forgets that replica's sockets, so it re-attaches."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from switchboard.actors.gateway_outbox import GatewayOutbox
from switchboard.actors.ops import CreateConversation, SendMessage
from switchboard.actors.ring import Ring
from switchboard.actors.shard import MailboxShard, PeerLink
from switchboard.storage.memory_store import MemoryStore

CID = "c_room"
RING = Ring(3)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---- the outbox alone ---------------------------------------------------------------------------

async def test_puts_wait_in_order_until_taken():
    outbox = GatewayOutbox(max_deliveries=10, max_bytes=1000)
    outbox.put("alice", 1, "one")
    outbox.put("bob", None, "typing")
    assert outbox.bytes == len("one") + len("typing")
    assert await outbox.take() == [("alice", 1, "one"), ("bob", None, "typing")]
    assert (outbox.items, outbox.bytes, outbox.ready.is_set()) == ([], 0, False)


async def test_overflow_by_count_drops_everything():
    outbox = GatewayOutbox(max_deliveries=3, max_bytes=1000)
    for cursor in range(1, 4):
        outbox.put("alice", cursor, "x")
    assert not outbox.overflowed and len(outbox.items) == 3  # at the bound: still fine
    outbox.put("alice", 4, "x")
    assert outbox.overflowed
    assert (outbox.items, outbox.bytes) == ([], 0)
    assert outbox.ready.is_set()


async def test_overflow_by_bytes_drops_everything():
    outbox = GatewayOutbox(max_deliveries=100, max_bytes=10)
    outbox.put("alice", 1, "123456")
    outbox.put("alice", 2, "1234")
    assert not outbox.overflowed and outbox.bytes == 10
    outbox.put("alice", 3, "1")
    assert outbox.overflowed
    assert (outbox.items, outbox.bytes) == ([], 0)


async def test_puts_after_an_overflow_are_ignored():
    outbox = GatewayOutbox(max_deliveries=1, max_bytes=1000)
    outbox.put("alice", 1, "x")
    outbox.put("alice", 2, "x")
    assert outbox.overflowed
    outbox.ready.clear()
    outbox.put("alice", 3, "x")
    assert (outbox.items, outbox.bytes, outbox.ready.is_set()) == ([], 0, False)
    assert outbox.overflowed  # once set, for good


async def test_an_overflow_wakes_the_taker_with_nothing():
    outbox = GatewayOutbox(max_deliveries=1, max_bytes=1000)
    taker = asyncio.ensure_future(outbox.take())
    await settle()
    assert not taker.done()
    outbox.put("alice", 1, "x")
    outbox.ready.clear()  # pretend the taker had not run yet: the overflow must set it again
    outbox.put("alice", 2, "x")
    assert await asyncio.wait_for(taker, 1.0) == []
    assert outbox.overflowed


# ---- a shard ends the stream of a replica that fell behind --------------------------------------

def users_on(shard_index: int, count: int) -> list[str]:
    candidates = (f"user{i}" for i in itertools.count())
    return list(itertools.islice((u for u in candidates if RING.user_shard(u) == shard_index), count))


LOCAL_A, LOCAL_B = users_on(0, 2)  # the shard below (index 0) hosts their mailboxes


class FakePeers(PeerLink):
    def deliver(self, shard_index, events):
        pass

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        pass


@pytest.fixture
async def shard():
    shard = MailboxShard(index=0, ring=RING, store=MemoryStore(), peers=FakePeers(), max_members=50,
                         commit_batch_max=512, queue_max=1000)
    (created,) = await shard.submit([CreateConversation(CID, LOCAL_A, (LOCAL_A, LOCAL_B), "", "local")])
    created.unwrap()
    yield shard
    await shard.stop()


def sends(count: int, start: int = 0) -> list[SendMessage]:
    return [SendMessage(CID, LOCAL_A, f"k{i}", f"message {i}") for i in range(start, start + count)]


async def read_stream(shard: MailboxShard, gateway_id: str, batches: list) -> None:
    async for batch in shard.stream(gateway_id):
        batches.append(batch)


async def test_a_stream_ends_when_its_outbox_overflows_and_the_shard_forgets_its_sockets(shard):
    await shard.attach("gw1", LOCAL_A, since=None)
    await shard.attach("gw1", LOCAL_B, since=None)
    await shard.attach("gw2", LOCAL_B, since=None)  # another replica's socket of the same user
    assert shard.mailboxes.online_users() == 2

    batches: list = []
    reader = asyncio.ensure_future(read_stream(shard, "gw1", batches))
    await settle()
    assert batches == [[]]  # the stream is open
    shard.mailboxes.current_outbox("gw1").max_deliveries = 3  # gw1 stops keeping up

    await shard.submit(sends(2))  # 4 deliveries for gw1 in one commit: past its bound
    await asyncio.wait_for(reader, 1.0)  # the stream ended
    assert batches == [[]]  # and nothing was yielded from the dropped outbox
    assert shard.mailboxes.current_outbox("gw1") is None
    assert shard.mailboxes.online_users() == 1  # LOCAL_A was only on gw1
    assert shard.mailboxes.sockets_of(LOCAL_B) == {"gw2": 1}
    gw2 = shard.mailboxes.current_outbox("gw2")
    assert [cursor for user, cursor, _ in gw2.items if user == LOCAL_B] == [2, 3]  # gw2 unaffected


async def test_after_an_overflow_the_replica_re_attaches_on_a_new_stream(shard):
    await shard.attach("gw1", LOCAL_B, since=None)
    first: list = []
    reader = asyncio.ensure_future(read_stream(shard, "gw1", first))
    await settle()
    shard.mailboxes.current_outbox("gw1").max_deliveries = 1
    await shard.submit(sends(2))
    await asyncio.wait_for(reader, 1.0)
    assert shard.mailboxes.online_users() == 0

    stream = shard.stream("gw1")
    assert await stream.__anext__() == []
    attached = await shard.attach("gw1", LOCAL_B, since=1)  # its last cursor: the create's event
    assert [event.cursor for event in attached.events] == [2, 3]  # what the dropped outbox held
    await shard.submit(sends(1, start=2))
    batch = await asyncio.wait_for(stream.__anext__(), 1.0)
    assert [(user, cursor) for user, cursor, _ in batch] == [(LOCAL_B, 4)]
    await stream.aclose()
