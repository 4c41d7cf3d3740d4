"""The wedge a hostile-client review found (issue #9): a 10,000-member conversation create, or 200
member additions to it at once, left the shard's writer stuck for good (PostgreSQL waiting for the
rest of a statement that psycopg never sent) and every later create hung. On the real PostgreSQL
of the test platform, through the sequencer and the SqlStore the shards use.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from switchboard.actors.ops import AddMember, CreateConversation, SendMessage
from switchboard.actors.sequencer import Sequencer
from switchboard.storage.database import make_engine
from switchboard.storage.sql_store import SqlStore

BIG = 10_000


@pytest.fixture
def sequencer(sb):
    engine = make_engine(sb.database_url, pool_size=2, statement_timeout_s=30)
    yield Sequencer(SqlStore(engine), max_members=BIG + 300)
    engine.dispose()


def new_id() -> str:
    return "c_" + uuid.uuid4().hex[:16]


def test_a_ten_thousand_member_create_commits_and_the_writer_goes_on(sequencer):
    cid = new_id()
    members = tuple(f"m{i}-{uuid.uuid4().hex[:6]}" for i in range(BIG))
    started = time.monotonic()
    result = sequencer.commit([CreateConversation(cid, "owner", members, "big", "local")], deadline=time.monotonic() + 30)
    elapsed = time.monotonic() - started
    assert result.outcomes[0].error is None, result.outcomes[0].error
    assert len(result.events) == BIG + 1 and all(e.cursor == 1 for e in result.events)
    assert elapsed < 10, f"the create took {elapsed:.1f} s"
    # The same connection pool serves the next transactions at once.
    after = sequencer.commit([SendMessage(cid, "owner", "hello", "hi all")], deadline=time.monotonic() + 30)
    assert after.outcomes[0].error is None and len(after.events) == BIG + 1
    print(f"\n10,000-member create: {elapsed:.2f} s; a message to it: {len(after.events)} events")


def test_two_hundred_additions_at_once_are_bounded_per_transaction_and_all_answered(sequencer):
    cid = new_id()
    members = tuple(f"n{i}-{uuid.uuid4().hex[:6]}" for i in range(2_000))
    assert sequencer.commit([CreateConversation(cid, "owner", members, "", "local")]).outcomes[0].error is None
    additions = [AddMember(cid, "owner", f"late{i}-{uuid.uuid4().hex[:6]}") for i in range(200)]
    pending, answered, transactions, started = list(additions), [], 0, time.monotonic()
    while pending:
        result = sequencer.commit(pending, deadline=time.monotonic() + 30, events_max=50_000)
        transactions += 1
        assert 1 <= result.planned <= len(pending)
        assert len(result.events) <= 50_000 + len(members) + 201  # never far past the bound
        answered += result.outcomes
        pending = pending[result.planned:]
    assert len(answered) == 200 and all(o.error is None for o in answered)
    assert transactions > 1  # 200 x ~2,100 events do not go in one transaction
    print(f"\n200 additions to a 2,000-member group: {transactions} transactions, {time.monotonic() - started:.1f} s")


def test_a_failed_big_batch_leaves_the_connection_usable(sequencer):
    """A transaction that fails in the database with a large statement behind the failing one (a
    stale fence: `pipeline aborted` for the ~1 MB of mailbox events after it) must leave no
    connection half-way through a message: the batch is re-planned and commits, and so does the
    next one, at once."""
    cid = new_id()
    members = tuple(f"p{i}-{uuid.uuid4().hex[:6]}" for i in range(BIG))
    assert sequencer.commit([CreateConversation(cid, "owner", members, "", "local")]).outcomes[0].error is None
    assert all(o.error is None for o in sequencer.commit([SendMessage(cid, "owner", f"k{i}", "x") for i in range(3)]).outcomes)
    stale = Sequencer(sequencer.store, max_members=BIG + 300)
    stale.cache.remember(dataclasses.replace(sequencer.cache.get(cid), last_seq=0))  # believes nothing was sent
    started = time.monotonic()
    again = stale.commit([SendMessage(cid, "owner", "k-new", "y")], deadline=time.monotonic() + 30)
    assert again.outcomes[0].error is None and again.outcomes[0].value["seq"] == 4
    assert stale.replans == 1
    assert stale.commit([SendMessage(cid, "owner", "k-last", "z")]).outcomes[0].value["seq"] == 5
    assert time.monotonic() - started < 10
