"""The placement fence on the real PostgreSQL (storage/placements.py, group_commit.PLACEMENT_FENCE):
a group commit carrying its shard's current epoch commits; once the region's placement advanced,
one carrying the old epoch is refused as StalePlacement and writes nothing, while the new epoch
commits, for an old shard and for one the reshard added. A made-up region, so no shard of the
running platform is fenced; its rows are removed afterwards."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from switchboard.protocol import new_conversation_id, now_ms
from switchboard.storage.models import MEMBER, Conversation, MailboxEvent, WriteBatch
from switchboard.storage.placements import StoredPlacement
from switchboard.storage.store import StalePlacement

pytestmark = pytest.mark.integration


@pytest.fixture
def region(store):
    name = f"fence-test-{uuid.uuid4().hex[:12]}"
    yield name
    with store.engine.begin() as conn:
        for table in ("placement_fences", "placements"):
            conn.execute(text(f"DELETE FROM {table} WHERE region = :region"), {"region": name})


def creating(region: str, fence_index: int, epoch: int) -> tuple[str, WriteBatch]:
    """A new conversation of one member, fenced as shard fence_index of region at epoch."""
    conversation_id, creator = new_conversation_id(), f"fence-{uuid.uuid4().hex[:12]}"
    conversation = Conversation(conversation_id, "fenced", "local", creator, now_ms(), 0, {creator})
    joined = MailboxEvent(creator, MEMBER, conversation_id,
                          {"conversation_id": conversation_id, "user_id": creator, "action": "joined"})
    return conversation_id, WriteBatch(new_conversations=[conversation], events=[joined],
                                       placement_fence=(region, fence_index, epoch))


def test_a_commit_fenced_with_an_old_epoch_is_refused_and_writes_nothing(store, region):
    assert store.placements.ensure(region, 2) == StoredPlacement(region, 2, 1)
    first, batch = creating(region, 0, 1)
    store.apply(batch)
    assert store.load_conversation(first).members == {batch.new_conversations[0].created_by}

    assert store.placements.advance(region, 3, 2) == StoredPlacement(region, 3, 2)
    assert store.placements.load(region) == StoredPlacement(region, 3, 2)
    stale, batch = creating(region, 0, 1)
    with pytest.raises(StalePlacement):
        store.apply(batch)
    assert store.load_conversation(stale) is None
    assert store.events_after(batch.events[0].user_id, 0, 10**9, 10) == []

    for index in (0, 2):  # an old shard and the one the reshard added, at the new epoch
        current, batch = creating(region, index, 2)
        store.apply(batch)
        assert store.load_conversation(current) is not None
