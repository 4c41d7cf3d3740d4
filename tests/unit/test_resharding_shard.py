"""Live resharding on the shards' side, without Ray: the ring moves about the least share of keys
(actors/placement.py moved_fraction against ideal_moved_fraction) and only keys whose owner
changes; Ownership and PlacementView; the stored placement and its fences (MemoryPlacements, and
MemoryStore refusing a batch fenced with a stale epoch); and a MailboxShard (in-memory store,
recording peers) going from 2 to 4 shards: it lets go of what it no longer owns, answers Moved
for it with nothing committed, forwards misrouted deliveries once, and a shard that missed the
reshard has its commit refused, reads the placement itself and then commits."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from switchboard.actors.ops import CreateConversation, SendMessage, TakeTokens
from switchboard.actors.placement import (PLACEMENT_MARK, Ownership, ideal_moved_fraction,
                                          moved_fraction)
from switchboard.actors.ring import Ring
from switchboard.actors.shard import MailboxShard, PeerLink
from switchboard.errors import Moved
from switchboard.protocol import now_ms
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.models import MEMBER, MESSAGE, Conversation, MailboxEvent, WriteBatch
from switchboard.storage.placements import MemoryPlacements, StoredPlacement
from switchboard.storage.store import StalePlacement

REGION = "local"
KEYS = [f"user-{i}" for i in range(20_000)]
# How far the ring's share of moved keys may be from the least possible (64 points per shard).
RING_SLACK = 0.06
OLD, NEW = Ring(2), Ring(4)  # the shard under test is index 0 of OLD, then of NEW


def ids(prefix: str, count: int, where) -> list[str]:
    """The first `count` ids prefix0, prefix1, ... for which where(id) holds."""
    return list(itertools.islice((key for key in (f"{prefix}{i}" for i in itertools.count()) if where(key)), count))


# Ten of each that shard 0 owns on OLD; some stay on it on NEW, the others move to shard 2 or 3.
CONVERSATIONS = ids("c_room", 10, lambda cid: OLD.conversation_shard(cid) == 0)
USERS = ids("user", 10, lambda user: OLD.user_shard(user) == 0)
MOVED_CONVERSATIONS = [cid for cid in CONVERSATIONS if NEW.conversation_shard(cid) != 0]
MOVED_USERS = [user for user in USERS if NEW.user_shard(user) != 0]
KEPT_CONVERSATION = next(cid for cid in CONVERSATIONS if cid not in MOVED_CONVERSATIONS)
KEPT_USERS = [user for user in USERS if user not in MOVED_USERS]
CREATOR = KEPT_USERS[0]


def test_the_keys_above_include_both_kept_and_moved_ones():
    assert 0 < len(MOVED_CONVERSATIONS) < len(CONVERSATIONS)
    assert 0 < len(MOVED_USERS) < len(USERS) - 1
    assert {NEW.conversation_shard(cid) for cid in MOVED_CONVERSATIONS} | {NEW.user_shard(u) for u in MOVED_USERS} <= {2, 3}


# ---- the ring ------------------------------------------------------------------------------------

RESHARDS = [(2, 3, 1 / 3), (2, 4, 1 / 2), (4, 2, 1 / 2), (3, 1, 2 / 3)]


@pytest.mark.parametrize(("old", "new", "ideal"), RESHARDS)
def test_the_ring_moves_within_a_few_points_of_the_least_share_any_scheme_must(old, new, ideal):
    assert ideal_moved_fraction(old, new) == pytest.approx(ideal)
    assert abs(moved_fraction(old, new, KEYS) - ideal) <= RING_SLACK


@pytest.mark.parametrize(("old", "new", "ideal"), RESHARDS)
def test_only_keys_whose_shard_differs_move_and_only_onto_added_or_off_removed_shards(old, new, ideal):
    before, after = Ring(old), Ring(new)
    kept = [key for key in KEYS if before.user_shard(key) == after.user_shard(key)]
    moved = [key for key in KEYS if before.user_shard(key) != after.user_shard(key)]
    assert moved_fraction(old, new, kept) == 0 and moved_fraction(old, new, moved) == 1
    assert moved_fraction(old, new, KEYS) == len(moved) / len(KEYS)
    if new > old:  # an added shard takes keys; no key goes from one old shard to another
        assert all(after.user_shard(key) >= old for key in moved)
    else:  # only the removed shards' keys move
        assert all(before.user_shard(key) >= new for key in moved)


# ---- Ownership and PlacementView -------------------------------------------------------------------

def test_ownership_takes_only_a_newer_epoch():
    ownership = Ownership(REGION, 1, 2, epoch=3)
    before = ownership.view
    assert not ownership.adopt(4, 3)
    assert not ownership.adopt(4, 2)
    assert ownership.view is before
    assert ownership.adopt(4, 4)
    view = ownership.view
    assert (view.region, view.index, view.ring.shard_count, view.epoch) == (REGION, 1, 4, 4)
    assert view.fence() == (REGION, 1, 4)
    moved = view.moved()
    assert isinstance(moved, Moved) and (moved.region, moved.epoch) == (REGION, 4)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_each_key_is_owned_by_exactly_the_view_whose_index_its_ring_names(count):
    ring, views = Ring(count), [Ownership(REGION, index, count).view for index in range(count)]
    keys = KEYS[:2000]
    for key in keys:
        assert [view.owns_user(key) for view in views] == [index == ring.user_shard(key) for index in range(count)]
        cid = "c_" + key
        assert [view.owns_conversation(cid) for view in views] == \
            [index == ring.conversation_shard(cid) for index in range(count)]


# ---- the stored placement and its fences ---------------------------------------------------------

def test_memory_placements_seed_a_region_once_and_each_advance_moves_the_epoch_by_one():
    placements = MemoryPlacements()
    assert placements.load("eu") is None
    assert placements.ensure("eu", 2) == StoredPlacement("eu", 2, 1)
    assert placements.ensure("eu", 5) == StoredPlacement("eu", 2, 1)  # the setting seeds a new region only
    assert placements.fences == {("eu", 0): 1, ("eu", 1): 1}
    assert placements.advance("eu", 4, 2) == StoredPlacement("eu", 4, 2)
    assert placements.fences == {("eu", index): 2 for index in range(4)}
    assert placements.advance("eu", 1, 4) == StoredPlacement("eu", 1, 3)
    assert placements.fences == {("eu", index): 3 for index in range(4)}  # the removed shards too
    assert placements.load("eu") == StoredPlacement("eu", 1, 3)


def creating(conversation_id: str, fence: tuple[str, int, int]) -> WriteBatch:
    conversation = Conversation(conversation_id, "", REGION, "alice", now_ms(), 0, {"alice"})
    joined = MailboxEvent("alice", MEMBER, conversation_id,
                          {"conversation_id": conversation_id, "user_id": "alice", "action": "joined"})
    return WriteBatch(new_conversations=[conversation], events=[joined], placement_fence=fence)


def test_a_batch_fenced_with_a_stale_epoch_is_refused_and_writes_nothing():
    store = MemoryStore()
    store.placements.ensure(REGION, 2)
    store.apply(creating("c_before", (REGION, 0, 1)))
    store.placements.advance(REGION, 3, 2)
    with pytest.raises(StalePlacement):
        store.apply(creating("c_stale", (REGION, 0, 1)))
    assert store.load_conversation("c_stale") is None
    assert [event.conversation_id for event in store.events_after("alice", 0, 10**9, 100)] == ["c_before"]
    store.apply(creating("c_current", (REGION, 0, 2)))
    store.apply(creating("c_added_shard", (REGION, 2, 2)))
    assert store.load_conversation("c_current") is not None and store.load_conversation("c_added_shard") is not None


# ---- a shard going from 2 to 4 shards ----------------------------------------------------------------

class RecordingPeers(PeerLink):
    """Records every call as (method, shard index or region, user ids)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def _record(self, method, where, items):
        self.calls.append((method, where, [item if isinstance(item, str) else item.user_id for item in items]))

    def deliver(self, shard_index, events):
        self._record("deliver", shard_index, events)

    def forward(self, shard_index, events):
        self._record("forward", shard_index, events)

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        self._record("deliver_ephemeral", shard_index, user_ids)

    def forward_ephemeral(self, shard_index, user_ids, frame):
        self._record("forward_ephemeral", shard_index, user_ids)

    def deliver_abroad(self, region, events):
        self._record("deliver_abroad", region, events)

    def deliver_ephemeral_abroad(self, region, user_ids, frame):
        self._record("deliver_ephemeral_abroad", region, user_ids)

    def forget_handles(self):
        self.calls.append(("forget_handles", None, []))

    def of(self, method: str) -> list[tuple]:
        return [(where, users) for name, where, users in self.calls if name == method]


@pytest.fixture
def peers() -> RecordingPeers:
    return RecordingPeers()


@pytest.fixture
async def serving(peers):
    """A store with REGION seeded at 2 shards, and shard 0 of them sequencing CONVERSATIONS and
    hosting the live mailboxes of USERS (one socket each on gw1)."""
    store = MemoryStore()
    store.placements.ensure(REGION, 2)
    shard = MailboxShard(index=0, ring=OLD, store=store, peers=peers, max_members=50,
                         commit_batch_max=512, queue_max=1000, region=REGION)
    created = await shard.submit([CreateConversation(cid, CREATOR, (), "", REGION) for cid in CONVERSATIONS])
    assert all(outcome.error is None for outcome in created)
    for user in USERS:
        await shard.attach("gw1", user, since=None)
    peers.calls.clear()
    yield shard, store
    await shard.stop()


@pytest.fixture
async def adopted(serving):
    """The same after the reshard to 4 shards; also returns adopt's figures."""
    shard, store = serving
    epoch = store.placements.advance(REGION, 4, 2).epoch
    figures = await shard.adopt(4, epoch)
    return shard, store, figures


def send(cid: str, key: str = "k0") -> SendMessage:
    return SendMessage(cid, CREATOR, key, f"body {key}")


def message(user_id: str, cursor: int) -> MailboxEvent:
    return MailboxEvent(user_id, MESSAGE, KEPT_CONVERSATION, {"message": {"seq": cursor}}, seq=cursor, cursor=cursor)


def assert_moved(error, epoch: int) -> None:
    assert isinstance(error, Moved), error
    assert (error.region, error.epoch) == (REGION, epoch)


async def test_adopting_lets_go_of_exactly_the_conversations_and_mailboxes_the_new_ring_moves(adopted, peers):
    shard, _, figures = adopted
    assert figures == {"adopted": True, "epoch": 2,
                       "conversations_moved": len(MOVED_CONVERSATIONS), "mailboxes_moved": len(MOVED_USERS),
                       "conversations_kept": len(CONVERSATIONS) - len(MOVED_CONVERSATIONS),
                       "mailboxes_kept": len(KEPT_USERS)}
    assert (shard.epoch, shard.ring.shard_count) == (2, 4)
    assert {cid for cid in CONVERSATIONS if cid in shard.sequencer.cache} == set(CONVERSATIONS) - set(MOVED_CONVERSATIONS)
    assert {user for user in USERS if shard.mailboxes.sockets_of(user)} == set(KEPT_USERS)
    assert peers.of("forget_handles") == [(None, [])]


async def test_adopting_the_same_epoch_again_gives_the_same_figures_and_an_older_one_changes_nothing(adopted):
    shard, _, figures = adopted
    assert await shard.adopt(4, 2) == figures
    assert await shard.adopt(2, 1) == {"adopted": False, "epoch": 2}
    assert shard.ring.shard_count == 4


async def test_a_send_for_a_moved_conversation_is_answered_moved_in_its_place_and_not_committed(adopted):
    shard, store, _ = adopted
    moved = MOVED_CONVERSATIONS[0]
    before, kept = await shard.submit([send(moved, "a"), send(KEPT_CONVERSATION, "b")])
    assert_moved(before.error, 2)
    assert kept.unwrap()["seq"] == 1  # the owned one in the same call commits under the new fence
    assert store.messages_page(moved, None, None, 10) == []
    assert store.load_conversation(moved).last_seq == 0


async def test_a_token_lease_or_an_attach_for_a_moved_user_is_answered_moved(adopted):
    shard, _, _ = adopted
    (lease,) = await shard.submit([TakeTokens(MOVED_USERS[0], "send", 1)])
    assert_moved(lease.error, 2)
    (kept_lease,) = await shard.submit([TakeTokens(KEPT_USERS[0], "send", 1)])
    assert not isinstance(kept_lease.error, Moved)
    with pytest.raises(Moved) as refused:
        await shard.attach("gw2", MOVED_USERS[0], since=None)
    assert refused.value.epoch == 2
    with pytest.raises(Moved):
        await shard.attach_many("gw2", [(KEPT_USERS[0], None), (MOVED_USERS[0], None)])
    assert not shard.mailboxes.sockets_of(MOVED_USERS[0])


async def test_a_delivery_for_a_user_owned_elsewhere_is_forwarded_once_to_its_owner(adopted, peers):
    shard, _, _ = adopted
    moved_user, kept_user = MOVED_USERS[0], KEPT_USERS[1]  # kept_user's head is 0: nothing was sent to it
    shard.deliver([message(moved_user, 1), message(kept_user, 1)])
    assert peers.of("forward") == [(NEW.user_shard(moved_user), [moved_user])]
    assert [(user, cursor) for user, cursor, _ in shard.mailboxes.outbox("gw1").items] == [(kept_user, 1)]
    shard.deliver([message(moved_user, 2)], forwarded=True)
    assert len(peers.of("forward")) == 1  # a forwarded delivery is never forwarded again


async def test_a_typing_frame_for_a_user_owned_elsewhere_is_forwarded_once_too(adopted, peers):
    shard, _, _ = adopted
    moved_user = MOVED_USERS[0]
    shard.deliver_ephemeral([moved_user, KEPT_USERS[0]], {"type": "typing"})
    assert peers.of("forward_ephemeral") == [(NEW.user_shard(moved_user), [moved_user])]
    shard.deliver_ephemeral([moved_user], {"type": "typing"}, forwarded=True)
    assert len(peers.of("forward_ephemeral")) == 1


# ---- a shard that missed the reshard -----------------------------------------------------------------

async def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the shard did not catch up"
        await asyncio.sleep(0.01)


def placement_marks(shard: MailboxShard) -> list[tuple]:
    return [item for item in shard.mailboxes.outbox("gw1").items if item[0] == PLACEMENT_MARK]


async def test_a_shard_that_did_not_adopt_is_refused_by_the_fence_then_reads_the_placement_and_commits(serving):
    shard, store = serving
    store.placements.advance(REGION, 4, 2)  # the router could not reach this shard
    refused = await shard.submit([send(KEPT_CONVERSATION, "a"), send(KEPT_CONVERSATION, "b")])
    for outcome in refused:
        assert_moved(outcome.error, 1)  # the placement it planned under
    assert store.messages_page(KEPT_CONVERSATION, None, None, 10) == []

    await wait_until(lambda: placement_marks(shard))  # it adopted, then told its gateways
    assert placement_marks(shard) == [(PLACEMENT_MARK, 2, REGION)]
    assert (shard.epoch, shard.ring.shard_count) == (2, 4)
    retried = await shard.submit([send(KEPT_CONVERSATION, "a"), send(KEPT_CONVERSATION, "b")])
    assert [outcome.unwrap()["seq"] for outcome in retried] == [1, 2]
    assert [m.client_msg_id for m in store.messages_page(KEPT_CONVERSATION, None, None, 10)] == ["a", "b"]
