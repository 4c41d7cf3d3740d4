"""Checkpoints of the plain classes on the in-memory store: the codec (actors/checkpoint.py), the
per-conversation version every change moves, the sequencer starting from a checkpoint (current,
changed after it, gone, or lying about last_seq), and the router's placement epoch and retention
schedule."""

from __future__ import annotations

import zlib

import pytest

from switchboard.actors.checkpoint import (
    MailboxRecord,
    RouterCheckpoint,
    ShardCheckpoint,
    decode_router,
    decode_shard,
    encode_router,
    encode_shard,
)
from switchboard.actors.ops import AddMember, CreateConversation, MarkRead, RemoveMember, SendMessage
from switchboard.actors.router import Placement, RegionRouter
from switchboard.actors.sequencer import Sequencer
from switchboard.errors import Forbidden, NotFound
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.models import Conversation, Message, WriteBatch

CID = "c_room"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def new_sequencer(store: MemoryStore) -> Sequencer:
    return Sequencer(store, max_members=10)


@pytest.fixture
def room(store) -> Sequencer:
    """A sequencer whose conversation CID has alice (creator), bob and carol, and 3 messages."""
    sequencer = new_sequencer(store)
    sequencer.commit([CreateConversation(CID, "alice", ("bob", "carol"), "room", "local")])
    sequencer.commit([send(f"k{i}") for i in range(3)])
    return sequencer


def send(key: str, sender: str = "alice", cid: str = CID) -> SendMessage:
    return SendMessage(cid, sender, key, f"body of {key}")


def version(store: MemoryStore, cid: str = CID) -> int:
    return store.conversation_versions([cid])[cid]


def events_of(store: MemoryStore, user_id: str) -> list:
    return store.events_after(user_id, 0, 10**9, 10**6)


def restart(store: MemoryStore, snapshot) -> tuple[Sequencer, dict]:
    """A new sequencer (a restarted shard's) started from `snapshot` through the codec."""
    conversations, sends = snapshot
    decoded = decode_shard(encode_shard(ShardCheckpoint("shard:test:0", 1, 0, 0, conversations, sends, [], [])))
    sequencer = new_sequencer(store)
    return sequencer, sequencer.restore(decoded.conversations, decoded.recent_sends)


# ---- the codec -----------------------------------------------------------------------------------

def test_a_shard_checkpoint_survives_encoding():
    checkpoint = ShardCheckpoint(
        owner="shard:local:0", shard_count=2, taken_at=1_700_000_000_000, commits=42,
        conversations=[Conversation("c1", "Tîtle \u2603", "eu", "alice", 5, 7, {"alice", "bob"},
                                    read_marks={"bob": 6}, version=9)],
        recent_sends=[Message("c1", 7, "m_1", "alice", "k7", "h\u00e9llo \"quoted\"\n", 1234)],
        mailboxes=[MailboxRecord("alice", 12, {"gw-a": [1, 2], "gw-b": [7]})],
        gateways=["gw-a", "gw-b"],
    )
    assert decode_shard(encode_shard(checkpoint)) == checkpoint


def test_a_large_checkpoint_is_encoded_in_chunks_and_stays_whole():
    conversations = [Conversation(f"c{i}", "", "local", "u", 0, i, {f"u{i}", f"v{i}"}, version=i) for i in range(1234)]
    checkpoint = ShardCheckpoint("shard:local:0", 1, 1, 1, conversations, [], [], [])
    decoded = decode_shard(encode_shard(checkpoint))
    assert [c.conversation_id for c in decoded.conversations] == [f"c{i}" for i in range(1234)]
    assert decoded.conversations[1233].members == {"u1233", "v1233"}


def test_a_router_checkpoint_survives_encoding():
    checkpoint = RouterCheckpoint("router:eu", 5, "eu", "ns", ("shard:eu:0", "shard:eu:1"), 3, 4)
    assert decode_router(encode_router(checkpoint)) == checkpoint


@pytest.mark.parametrize("state", [
    b"not zlib at all",
    zlib.compress(b"not json"),
    zlib.compress(b'{"format": 99, "kind": "shard"}'),
    encode_router(RouterCheckpoint("router:eu", 5, "eu", "ns", (), 1, 0)),  # another kind
    zlib.compress(b'[1, 2]'),
    zlib.compress(b'{"format": 1, "kind": "shard", "owner": "x"}'),  # fields missing
])
def test_an_unreadable_or_foreign_checkpoint_is_ignored(state):
    assert decode_shard(state) is None


# ---- the version: every change moves it, and it is fenced ----------------------------------------

def test_every_commit_that_changes_a_conversation_moves_its_version_once(room, store):
    start = version(store)
    room.commit([send("a"), send("b"), MarkRead(CID, "bob", 1)])  # one batch: one move
    assert version(store) == start + 1
    room.commit([AddMember(CID, "alice", "dave")])
    room.commit([RemoveMember(CID, "carol", "carol")])
    room.commit([MarkRead(CID, "bob", 2)])
    assert version(store) == start + 4
    # The sequencer's cached copy moved with it (that is what a checkpoint records).
    assert room.conversation(CID).version == version(store)


def test_a_commit_that_changes_nothing_leaves_the_version(room, store):
    start = version(store)
    result = room.commit([
        send("k0"),                       # a retry answered with its original
        AddMember(CID, "alice", "bob"),   # already a member
        MarkRead(CID, "bob", 0),          # not past the mark
        send("x", sender="mallory"),      # refused
    ])
    assert isinstance(result.outcomes[3].error, Forbidden)
    assert version(store) == start


def test_a_member_change_alone_is_fenced_against_a_stale_last_seq(room, store):
    # Another writer appended behind this sequencer's back (a split brain during a restart).
    store.apply(WriteBatch(seq_fences={CID: (3, 5)}))
    result = room.commit([AddMember(CID, "alice", "dave")])
    assert result.outcomes[0].error is None
    assert room.replans == 1  # the fence refused the stale plan; it was planned again from storage
    assert "dave" in store.load_conversation(CID).members
    assert room.conversation(CID).last_seq == 5


# ---- the sequencer starting from a checkpoint ----------------------------------------------------

def test_current_conversations_are_served_from_the_checkpoint_without_a_load(room, store):
    restarted, counts = restart(store, room.snapshot(100))
    assert counts == {"conversations": 1, "current": 1, "reloaded": 0, "gone": 0,
                      "replayed_messages": 0, "recent_sends": 3}
    result = restarted.commit([send("k3")])
    assert result.outcomes[0].unwrap()["seq"] == 4
    assert restarted.loads == 0 and restarted.replans == 0


def test_what_changed_after_the_checkpoint_is_reloaded_and_replayed(room, store):
    snapshot = room.snapshot(100)
    room.commit([send("after-1"), AddMember(CID, "alice", "dave")])
    room.commit([send("after-2", sender="dave")])
    restarted, counts = restart(store, snapshot)
    assert (counts["current"], counts["reloaded"], counts["replayed_messages"]) == (0, 1, 2)

    # dave joined after the checkpoint: he gets the next message (a stale member list would lose it).
    dave_before = len(events_of(store, "dave"))
    result = restarted.commit([send("k-next")])
    assert result.outcomes[0].unwrap()["seq"] == 6
    assert len(events_of(store, "dave")) == dave_before + 1
    # A retry of a send committed after the checkpoint is answered from memory: no collision.
    retry = restarted.commit([send("after-2", sender="dave")]).outcomes[0]
    assert retry.created is False and retry.unwrap()["seq"] == 5
    assert restarted.loads == 0 and restarted.replans == 0


def test_a_checkpoint_lying_about_last_seq_still_cannot_misnumber(room, store):
    conversations, sends = room.snapshot(100)
    wrong = conversations[0]
    wrong.last_seq = 1  # as if checkpointed long ago, with the version of today: the fence decides
    restarted, counts = restart(store, ([wrong], sends))
    assert counts["current"] == 1
    result = restarted.commit([send("k3")])
    assert result.outcomes[0].unwrap()["seq"] == 4
    assert restarted.replans == 1
    assert [m.seq for m in store.messages_page(CID, None, None, 100)] == [1, 2, 3, 4]


def test_conversations_gone_from_storage_are_dropped(room, store):
    conversations, sends = room.snapshot(100)
    ghost = Conversation("c_ghost", "", "local", "alice", 0, 3, {"alice"})
    restarted, counts = restart(store, (conversations + [ghost], sends))
    assert (counts["current"], counts["gone"]) == (1, 1)
    assert restarted.conversation("c_ghost") is None


def test_the_snapshot_keeps_the_newest_sends(room):
    room.commit([send(f"more-{i}") for i in range(5)])
    _, sends = room.snapshot(4)
    assert [m.client_msg_id for m in sends] == ["more-1", "more-2", "more-3", "more-4"]


def test_committing_after_a_snapshot_leaves_the_snapshot_as_it_was(room):
    conversations, _ = room.snapshot(100)
    room.commit([send("later"), AddMember(CID, "alice", "dave"), MarkRead(CID, "bob", 2)])
    (captured,) = conversations
    assert (captured.last_seq, captured.members, captured.read_marks) == (3, {"alice", "bob", "carol"}, {})


# ---- the router --------------------------------------------------------------------------------

NAMES = ["shard:eu:0", "shard:eu:1"]
HOUR_S = 3600


def test_a_restarted_router_keeps_its_retention_schedule():
    first = RegionRouter("eu", "ns", NAMES, "router:eu", now_ms=0, epoch=4)
    first.retention_ran(now_ms=1_000_000)
    checkpoint = decode_router(encode_router(first.snapshot(now_ms=1_200_000)))
    assert checkpoint.epoch == 4  # recorded for operators; the placement itself is read from PostgreSQL

    again = RegionRouter("eu", "ns", NAMES, "router:eu", now_ms=1_300_000, epoch=4)
    again.restore(checkpoint)
    # Due an hour after the last run, not an hour after the restart nor at once.
    assert again.retention_due_in_s(1_300_000, HOUR_S, at_least_s=60) == pytest.approx(HOUR_S - 300)


def test_an_overdue_retention_waits_a_little_after_a_restart():
    router = RegionRouter("eu", "ns", NAMES, "router:eu", now_ms=0)
    assert router.retention_due_in_s(10 * HOUR_S * 1000, HOUR_S, at_least_s=60) == 60


# ---- what is not in memory is read in bulk --------------------------------------------------------

class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def load_conversation(self, conversation_id):
        self.reads.append("one")
        return super().load_conversation(conversation_id)

    def load_conversations(self, conversation_ids):
        self.reads.append(f"bulk {len(conversation_ids)}")
        return super().load_conversations(conversation_ids)


def test_a_batch_reads_all_its_conversations_missing_from_memory_at_once():
    store = CountingStore()
    first = new_sequencer(store)
    first.commit([CreateConversation(f"c{i}", "alice", ("bob",), "", "local") for i in range(20)])
    store.reads.clear()

    restarted = new_sequencer(store)  # an empty cache, as after a restart without a checkpoint
    result = restarted.commit([send(f"k{i}", cid=f"c{i}") for i in range(20)] + [send("x", cid="c_none")])
    assert [o.unwrap()["seq"] for o in result.outcomes[:20]] == [1] * 20
    # One bulk read for all 21; the one that does not exist is remembered as missing, so planning
    # it costs no second query.
    assert store.reads == ["bulk 21"]
    assert isinstance(result.outcomes[20].error, NotFound)
