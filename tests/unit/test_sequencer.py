"""The conversation sequencer (actors/sequencer.py) on the in-memory store: group commit, seq,
idempotent sends, membership, receipts, and what a failed or contested commit leaves behind."""

from __future__ import annotations

import pytest

from switchboard.actors.ops import AddMember, CreateConversation, MarkRead, RemoveMember, SendMessage
from switchboard.actors.sequencer import Sequencer
from switchboard.errors import Forbidden, Invalid, NotFound, Overloaded
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.models import MEMBER, MESSAGE, RECEIPT, WriteBatch
from switchboard.storage.store import StaleSequencer, StorageUnavailable

CID = "c_room"
EVERYONE = ["alice", "bob", "carol"]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def sequencer(store) -> Sequencer:
    return Sequencer(store, max_members=5)


@pytest.fixture
def room(sequencer) -> Sequencer:
    """A conversation of alice (its creator), bob and carol."""
    sequencer.commit([create(CID, "alice", "bob", "carol")])
    return sequencer


def create(cid: str, creator: str, *members: str) -> CreateConversation:
    return CreateConversation(cid, creator, tuple(members), "a title", "local")


def send(key: str, sender: str = "alice", body: str | None = None, cid: str = CID) -> SendMessage:
    return SendMessage(cid, sender, key, body or f"body of {key}")


def values(result) -> list[dict]:
    return [outcome.unwrap() for outcome in result.outcomes]


def errors(result) -> list[type | None]:
    return [type(outcome.error) if outcome.error else None for outcome in result.outcomes]


def stored_seqs(store: MemoryStore, cid: str = CID) -> list[int]:
    return [message.seq for message in store.messages_page(cid, None, None, 1000)]


def mailbox(store: MemoryStore, user_id: str, after: int = 0) -> list:
    return store.events_after(user_id, after, 10**9, 10**6)


def heads(store: MemoryStore) -> dict[str, int]:
    return {user: store.mailbox_head(user).head for user in EVERYONE}


# ---- create ------------------------------------------------------------------------------------

def test_create_makes_the_creator_a_member(sequencer, store):
    result = sequencer.commit([create(CID, "alice", "bob")])
    (conversation,) = values(result)
    assert conversation["members"] == ["alice", "bob"]
    assert (conversation["last_seq"], conversation["region"], conversation["title"]) == (0, "local", "a title")
    assert store.load_conversation(CID).members == {"alice", "bob"}
    assert result.outcomes[0].created is True


def test_create_tells_each_member_about_itself(sequencer, store):
    result = sequencer.commit([create(CID, "alice", "bob", "carol")])
    assert sorted((e.user_id, e.payload["user_id"], e.payload["action"], e.cursor) for e in result.events) == [
        ("alice", "alice", "joined", 1), ("bob", "bob", "joined", 1), ("carol", "carol", "joined", 1)]
    assert {e.kind for e in result.events} == {MEMBER}
    assert [e.payload for e in mailbox(store, "bob")] == [
        {"conversation_id": CID, "user_id": "bob", "action": "joined"}]


def test_a_retried_create_returns_the_original_and_another_creator_is_forbidden(room, store):
    again = room.commit([create(CID, "alice", "bob", "carol")])
    assert (again.outcomes[0].created, again.events) == (False, [])
    assert again.outcomes[0].value["members"] == EVERYONE
    taken = room.commit([create(CID, "mallory")])
    assert errors(taken) == [Forbidden]
    assert heads(store) == {"alice": 1, "bob": 1, "carol": 1}


def test_create_over_max_members_is_invalid(store):
    sequencer = Sequencer(store, max_members=3)
    assert errors(sequencer.commit([create(CID, "alice", "b", "c", "d")])) == [Invalid]
    assert store.load_conversation(CID) is None
    assert errors(sequencer.commit([create(CID, "alice", "b", "c")])) == [None]


# ---- send --------------------------------------------------------------------------------------

def test_sends_get_gap_free_seq_across_batches(room, store):
    first = room.commit([send(f"k{i}") for i in range(5)])
    second = room.commit([send(f"k{i}", sender="bob") for i in range(5, 8)])
    assert [m["seq"] for m in values(first) + values(second)] == list(range(1, 9))
    assert stored_seqs(store) == list(range(1, 9))
    assert store.load_conversation(CID).last_seq == 8


def test_a_sent_message_is_the_stored_one(room, store):
    (message,) = values(room.commit([send("k1", sender="bob", body="hello")]))
    assert (message["sender"], message["client_msg_id"], message["body"]) == ("bob", "k1", "hello")
    assert message["message_id"].startswith("m_") and message["ts"] > 0
    assert store.messages_page(CID, None, None, 10)[0].to_wire() == message


def test_every_member_gets_one_message_event_per_message_in_seq_order(room, store):
    sent = values(room.commit([send("k1"), send("k2", sender="bob"), send("k3", sender="carol")]))
    for user in EVERYONE:
        events = mailbox(store, user, after=1)  # cursor 1 is the member/joined event
        assert [(e.kind, e.cursor, e.seq) for e in events] == [(MESSAGE, 2, 1), (MESSAGE, 3, 2), (MESSAGE, 4, 3)]
        assert [e.payload["message"] for e in events] == sent


def test_the_commit_result_carries_the_events_with_their_cursors(room):
    result = room.commit([send("k1"), send("k2")])
    assert sorted((e.user_id, e.cursor, e.seq) for e in result.events) == [
        ("alice", 2, 1), ("alice", 3, 2), ("bob", 2, 1), ("bob", 3, 2), ("carol", 2, 1), ("carol", 3, 2)]


def test_a_repeated_send_returns_the_original_and_writes_nothing(room, store):
    (original,) = values(room.commit([send("k1", body="first")]))
    before = heads(store)
    again = room.commit([send("k1", body="second try")])
    assert again.outcomes[0].value == original
    assert (again.outcomes[0].created, again.events) == (False, [])
    assert stored_seqs(store) == [1]
    assert heads(store) == before


def test_a_repeat_within_one_batch_is_written_once(room, store):
    result = room.commit([send("k1", body="one"), send("k1", body="two"), send("k2")])
    first, repeat, other = result.outcomes
    assert repeat.value == first.value
    assert [first.created, repeat.created, other.created] == [True, False, True]
    assert [first.value["seq"], other.value["seq"]] == [1, 2]
    assert stored_seqs(store) == [1, 2]
    assert [e.seq for e in mailbox(store, "carol", after=1)] == [1, 2]


def test_the_same_client_msg_id_from_two_senders_is_two_messages(room, store):
    result = room.commit([send("k1", sender="alice"), send("k1", sender="bob")])
    assert [o.value["seq"] for o in result.outcomes] == [1, 2]
    assert stored_seqs(store) == [1, 2]


def test_a_non_member_is_forbidden_and_the_rest_of_the_batch_commits(room, store):
    result = room.commit([send("k1", sender="mallory"), send("k2")])
    assert errors(result) == [Forbidden, None]
    assert stored_seqs(store) == [1]
    assert store.mailbox_head("mallory").head == 0


@pytest.mark.parametrize(
    "operation",
    [send("k1", cid="c_nope"), AddMember("c_nope", "alice", "bob"), RemoveMember("c_nope", "alice", "alice"),
     MarkRead("c_nope", "alice", 0)],
)
def test_an_unknown_conversation_is_not_found(sequencer, store, operation):
    assert errors(sequencer.commit([operation])) == [NotFound]
    assert store.mailbox_head("alice").head == 0


# ---- membership --------------------------------------------------------------------------------

def test_a_member_adds_someone_and_every_member_hears_of_it(room, store):
    result = room.commit([AddMember(CID, "bob", "dave")])
    assert values(result)[0]["members"] == ["alice", "bob", "carol", "dave"]
    assert sorted(e.user_id for e in result.events) == ["alice", "bob", "carol", "dave"]
    assert {(e.payload["user_id"], e.payload["action"]) for e in result.events} == {("dave", "joined")}
    assert store.load_conversation(CID).members == {"alice", "bob", "carol", "dave"}
    assert values(room.commit([send("k1", sender="dave")]))[0]["seq"] == 1


def test_adding_a_member_again_changes_nothing(room, store):
    result = room.commit([AddMember(CID, "alice", "bob")])
    assert (result.outcomes[0].created, result.events) == (False, [])
    assert heads(store) == {"alice": 1, "bob": 1, "carol": 1}


def test_a_non_member_cannot_add(room, store):
    assert errors(room.commit([AddMember(CID, "mallory", "mallory")])) == [Forbidden]
    assert "mallory" not in store.load_conversation(CID).members


def test_adding_past_max_members_is_invalid(store):
    sequencer = Sequencer(store, max_members=3)
    sequencer.commit([create(CID, "alice", "bob", "carol")])
    assert errors(sequencer.commit([AddMember(CID, "alice", "dave")])) == [Invalid]
    assert store.load_conversation(CID).members == {"alice", "bob", "carol"}


def test_only_a_member_itself_may_leave(room, store):
    assert errors(room.commit([RemoveMember(CID, "alice", "bob")])) == [Forbidden]
    assert errors(room.commit([RemoveMember(CID, "mallory", "mallory")])) == [Forbidden]
    assert store.load_conversation(CID).members == set(EVERYONE)


def test_leaving_tells_every_member_the_leaver_included(room, store):
    result = room.commit([RemoveMember(CID, "bob", "bob")])
    assert values(result)[0]["members"] == ["alice", "carol"]
    assert sorted(e.user_id for e in result.events) == EVERYONE
    assert {(e.payload["user_id"], e.payload["action"]) for e in result.events} == {("bob", "left")}
    assert store.load_conversation(CID).members == {"alice", "carol"}
    assert errors(room.commit([send("k1", sender="bob")])) == [Forbidden]


def test_a_message_after_a_leave_in_the_same_batch_skips_the_leaver(room, store):
    room.commit([RemoveMember(CID, "carol", "carol"), send("k1")])
    assert [e.kind for e in mailbox(store, "carol", after=1)] == [MEMBER]
    assert [e.kind for e in mailbox(store, "bob", after=1)] == [MEMBER, MESSAGE]


# ---- read receipts -----------------------------------------------------------------------------

def test_a_read_mark_sends_a_receipt_to_every_member(room, store):
    room.commit([send("k1"), send("k2"), send("k3")])
    result = room.commit([MarkRead(CID, "bob", 2)])
    receipt = {"conversation_id": CID, "user_id": "bob", "seq": 2}
    assert values(result) == [receipt]
    assert sorted(e.user_id for e in result.events) == EVERYONE
    assert all(e.kind == RECEIPT and e.payload == receipt for e in result.events)
    assert store.read_mark(CID, "bob") == 2


def test_a_read_mark_beyond_last_seq_is_invalid(room, store):
    room.commit([send("k1")])
    assert errors(room.commit([MarkRead(CID, "bob", 2)])) == [Invalid]
    assert store.read_mark(CID, "bob") is None


@pytest.mark.parametrize("seq", [1, 2])
def test_a_read_mark_not_above_the_previous_one_is_a_no_op(room, store, seq):
    room.commit([send("k1"), send("k2"), send("k3")])
    room.commit([MarkRead(CID, "bob", 2)])
    before = heads(store)
    result = room.commit([MarkRead(CID, "bob", seq)])
    assert (result.outcomes[0].created, result.events) == (False, [])
    assert result.outcomes[0].value["seq"] == 2
    assert heads(store) == before
    assert store.read_mark(CID, "bob") == 2


def test_read_marks_in_one_batch_only_move_forward(room, store):
    room.commit([send("k1"), send("k2"), send("k3")])
    result = room.commit([MarkRead(CID, "bob", 2), MarkRead(CID, "bob", 1), MarkRead(CID, "bob", 3)])
    assert [o.created for o in result.outcomes] == [True, False, True]
    assert [e.payload["seq"] for e in mailbox(store, "alice", after=4)] == [2, 3]
    assert store.read_mark(CID, "bob") == 3


def test_a_non_member_cannot_mark_read(room):
    assert errors(room.commit([MarkRead(CID, "mallory", 0)])) == [Forbidden]


# ---- when the database fails -------------------------------------------------------------------

def failing_apply(store: MemoryStore, error: Exception, land_first: bool = False):
    """store.apply that raises `error` once (after committing, with land_first), then works."""
    real_apply = store.apply

    def apply(batch, timeout_s=None):
        store.apply = real_apply
        if land_first:
            real_apply(batch)
        raise error

    store.apply = apply


def test_storage_unavailable_answers_overloaded_to_every_op_and_leaves_no_trace(room, store):
    failing_apply(store, StorageUnavailable("database went away"))
    batch = [send("k1"), send("k2", sender="bob"), send("k3", sender="mallory"), AddMember(CID, "alice", "dave")]
    result = room.commit(batch)
    assert errors(result) == [Overloaded] * 4
    assert result.events == []
    assert stored_seqs(store) == []
    assert heads(store) == {"alice": 1, "bob": 1, "carol": 1}
    assert store.load_conversation(CID).members == set(EVERYONE)

    retry = room.commit(batch)
    assert errors(retry) == [None, None, Forbidden, None]
    assert [o.value["seq"] for o in retry.outcomes[:2]] == [1, 2]
    assert stored_seqs(store) == [1, 2]


def test_a_commit_whose_answer_was_lost_is_found_again_on_retry(room, store):
    failing_apply(store, StorageUnavailable("connection lost during COMMIT"), land_first=True)
    assert errors(room.commit([send("k1")])) == [Overloaded]
    retry = room.commit([send("k1"), send("k2")])
    assert [(o.value["seq"], o.created) for o in retry.outcomes] == [(1, False), (2, True)]
    assert stored_seqs(store) == [1, 2]


def test_an_outage_on_reads_answers_overloaded_too(room, store):
    room.commit([send("k1")])
    store.fail_with = StorageUnavailable("database went away")
    assert errors(room.commit([send("k2"), MarkRead(CID, "bob", 1)])) == [Overloaded, Overloaded]
    store.fail_with = None
    assert values(room.commit([send("k2")]))[0]["seq"] == 2


def test_a_stale_sequencer_reloads_and_continues_from_the_stored_last_seq(room, store):
    room.commit([send("k1")])  # `room` now caches last_seq 1
    store.apply(WriteBatch(seq_fences={CID: (1, 3)}))  # last_seq moves behind its back

    result = room.commit([send("k2"), send("k3", sender="bob")])
    assert [o.value["seq"] for o in result.outcomes] == [4, 5]
    assert store.load_conversation(CID).last_seq == 5
    assert stored_seqs(store) == [1, 4, 5]
    assert [e.seq for e in mailbox(store, "carol", after=1)] == [1, 4, 5]
    assert values(room.commit([send("k4")]))[0]["seq"] == 6  # and its cache is right again


def test_a_stale_sequencer_whose_messages_collide_reloads_and_commits_gap_free(room, store):
    room.commit([send("k1")])  # `room` now caches last_seq 1
    other_owner = Sequencer(store, max_members=5)
    other_owner.commit([send("k2", sender="bob"), send("k3", sender="carol")])  # seq 2 and 3, behind our back

    result = room.commit([send("k4"), send("k2", sender="bob")])  # planned as seq 2: taken
    assert [(o.value["seq"], o.created) for o in result.outcomes] == [(4, True), (2, False)]
    assert stored_seqs(store) == [1, 2, 3, 4]
    assert [e.seq for e in mailbox(store, "alice", after=1)] == [1, 2, 3, 4]


def test_a_stale_sequencer_whose_messages_collide_commits_nothing_twice(room, store):
    """The stale sequencer reloads; the retried send finds no duplicate to make."""
    room.commit([send("k1")])
    Sequencer(store, max_members=5).commit([send("k2", sender="bob")])
    first, retry = room.commit([send("k3")]), room.commit([send("k3")])
    assert errors(first) in ([None], [Overloaded])
    assert retry.outcomes[0].value["seq"] == 3
    assert stored_seqs(store) == [1, 2, 3]


def test_a_second_stale_commit_is_refused_overloaded_not_raised(room, store):
    def always_stale(batch, timeout_s=None):
        raise StaleSequencer("another owner keeps writing")

    store.apply = always_stale
    assert errors(room.commit([send("k1"), send("k2")])) == [Overloaded, Overloaded]
    assert stored_seqs(store) == []


def test_typing_recipients_are_the_other_members(room):
    assert room.members_for_typing(CID, "bob") == ["alice", "carol"]
    with pytest.raises(Forbidden):
        room.members_for_typing(CID, "mallory")
    with pytest.raises(NotFound):
        room.members_for_typing("c_nope", "bob")


# ---- read marks survive what the sequencer forgets ----------------------------------------------

def restarted(sequencer: Sequencer, store: MemoryStore) -> Sequencer:
    return Sequencer(store, max_members=5)


def after_a_failed_commit(sequencer: Sequencer, store: MemoryStore) -> Sequencer:
    failing_apply(store, StorageUnavailable("database went away"))
    sequencer.commit([send("lost")])  # answered overloaded; the sequencer forgets what it cached
    return sequencer


@pytest.mark.parametrize("forget", [restarted, after_a_failed_commit])
def test_a_lower_read_mark_is_a_no_op_even_after_the_sequencer_forgot_its_cache(room, store, forget):
    room.commit([send("k1"), send("k2"), send("k3")])
    room.commit([MarkRead(CID, "bob", 3)])
    sequencer = forget(room, store)
    result = sequencer.commit([MarkRead(CID, "bob", 2)])
    assert result.events == []  # members must not hear "bob read 2" after "bob read 3"
    assert result.outcomes[0].value["seq"] == 3


# ---- text the database cannot store ------------------------------------------------------------

@pytest.mark.parametrize("body", ["nul \x00 inside", "lone surrogate \ud800"])
def test_a_body_the_database_cannot_store_is_refused_alone(room, store, body):
    result = room.commit([send("bad", body=body), send("k1", sender="bob")])
    assert errors(result) == [Invalid, None]  # not overloaded (a retry can never succeed), not internal
    assert stored_seqs(store) == [1]
