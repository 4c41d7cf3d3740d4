"""Who hears a typing indicator (actors/typing_relay.py TypingRelay): answered from the sequencer's
ConversationCache without a store read when it can be, one read per cold conversation however many
signals arrive meanwhile, NotFound / Forbidden as for any call, the miss cache honoured, and the
relay's own copy expiring after LOADED_TTL_S (fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.actors.conversation_cache import ConversationCache
from switchboard.actors.ops import AddMember, CreateConversation
from switchboard.actors.sequencer import Sequencer
from switchboard.actors.typing_relay import LOADED_TTL_S, TypingRelay
from switchboard.errors import Forbidden, NotFound
from switchboard.storage.memory_store import MemoryStore
from fake_clock import FakeClock

CID = "c_room"
MEMBERS = ("alice", "bob", "carol")


class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def load_conversation(self, conversation_id):
        self.reads.append(conversation_id)
        return super().load_conversation(conversation_id)


class Gate:
    """run_blocking that holds every read until opened (to make signals overlap)."""

    def __init__(self, open_: bool = True):
        self.opened = asyncio.Event()
        if open_:
            self.opened.set()

    async def __call__(self, function, *args):
        await self.opened.wait()
        return function(*args)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> CountingStore:
    """CID exists in the store with MEMBERS; the reads made to create it are not counted."""
    store = CountingStore()
    Sequencer(store, max_members=10).commit([CreateConversation(CID, "alice", MEMBERS, "", "local")])
    store.reads.clear()
    return store


@pytest.fixture
def cache(clock) -> ConversationCache:
    return ConversationCache(clock=clock)


def relay_for(cache, store, clock, gate: Gate | None = None) -> TypingRelay:
    return TypingRelay(cache, store, run_blocking=gate or Gate(), clock=clock)


async def test_a_conversation_in_the_sequencers_cache_is_answered_without_a_read(cache, store, clock):
    cache.remember(store.load_conversation(CID))
    store.reads.clear()
    relay = relay_for(cache, store, clock)
    assert await relay.recipients(CID, "alice") == ["bob", "carol"]
    assert await relay.recipients(CID, "carol") == ["alice", "bob"]
    assert store.reads == [] and relay.loads == 0


async def test_the_relay_never_reorders_or_fills_the_sequencers_cache(cache, store, clock):
    relay = relay_for(cache, store, clock)
    await relay.recipients(CID, "alice")
    assert CID not in cache  # the relay keeps its own copy; the sequencer's cache is only peeked


async def test_a_cold_conversation_is_read_once_for_many_concurrent_signals(cache, store, clock):
    gate = Gate(open_=False)
    relay = relay_for(cache, store, clock, gate)
    signals = [asyncio.ensure_future(relay.recipients(CID, user)) for user in (*MEMBERS, *MEMBERS)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.opened.set()
    answers = await asyncio.wait_for(asyncio.gather(*signals), 1.0)
    assert answers == [["bob", "carol"], ["alice", "carol"], ["alice", "bob"]] * 2
    assert store.reads == [CID] and relay.loads == 1
    assert await relay.recipients(CID, "bob") == ["alice", "carol"]  # kept: still one read
    assert store.reads == [CID]


async def test_a_missing_conversation_is_not_found(cache, store, clock):
    relay = relay_for(cache, store, clock)
    with pytest.raises(NotFound):
        await relay.recipients("c_nope", "alice")
    assert store.reads == ["c_nope"]


async def test_a_known_missing_id_costs_no_read(cache, store, clock):
    cache.remember_miss("c_nope")
    relay = relay_for(cache, store, clock)
    for _ in range(3):
        with pytest.raises(NotFound):
            await relay.recipients("c_nope", "alice")
    assert store.reads == [] and relay.loads == 0


async def test_once_the_sequencer_holds_the_miss_a_second_lookup_costs_no_read(cache, store, clock):
    relay = relay_for(cache, store, clock)
    with pytest.raises(NotFound):
        await relay.recipients("c_nope", "alice")
    cache.remember_miss("c_nope")  # as the sequencer does when a send to it finds nothing
    clock.advance(LOADED_TTL_S + 1)  # the relay's own copy of the miss has expired
    with pytest.raises(NotFound):
        await relay.recipients("c_nope", "alice")
    assert store.reads == ["c_nope"]


async def test_a_non_member_is_forbidden(cache, store, clock):
    relay = relay_for(cache, store, clock)
    with pytest.raises(Forbidden):
        await relay.recipients(CID, "mallory")  # from the relay's read
    cache.remember(store.load_conversation(CID))
    with pytest.raises(Forbidden):
        await relay.recipients(CID, "mallory")  # from the sequencer's cache


async def test_the_loaded_copy_expires_after_loaded_ttl(cache, store, clock):
    relay = relay_for(cache, store, clock)
    assert await relay.recipients(CID, "alice") == ["bob", "carol"]
    Sequencer(store, max_members=10).commit([AddMember(CID, "alice", "dave")])  # another owner's change
    store.reads.clear()

    clock.advance(LOADED_TTL_S - 0.1)
    assert await relay.recipients(CID, "alice") == ["bob", "carol"]  # the stale copy, no read
    assert store.reads == []

    clock.advance(0.2)
    assert await relay.recipients(CID, "alice") == ["bob", "carol", "dave"]
    assert store.reads == [CID] and relay.loads == 2
