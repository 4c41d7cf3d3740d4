"""Found by the chaos run (scripts/chaos, fault pg_restart): while PostgreSQL was down, some sends were
answered `internal` instead of `overloaded` (issue #4 point 4; PROTOCOL.md: `internal` is a bug).

SqlStore.apply takes its connection (engine.raw_connection()) outside the try that turns database
errors into StorageUnavailable; when the pool has to open a new connection while the database is
down, the driver's OperationalError escapes, Sequencer.commit does not recognise it, and the shard's
commit loop answers every operation of the batch `internal`. Every SqlStore method must say
StorageUnavailable when the database cannot be reached."""

from __future__ import annotations

import pytest
from switchboard.storage.database import make_engine
from switchboard.storage.models import Message, WriteBatch
from switchboard.storage.sql_store import SqlStore
from switchboard.storage.store import StorageUnavailable

UNREACHABLE = "postgresql://postgres@/postgres?host=/nonexistent-switchboard-socket-dir"


@pytest.fixture
def store():
    engine = make_engine(UNREACHABLE, pool_size=1)
    yield SqlStore(engine)
    engine.dispose()


def test_a_commit_while_the_database_is_down_is_storage_unavailable(store):
    batch = WriteBatch(messages=[Message("c_1", 1, "m_1", "alice", "k1", "hello", 1)])
    with pytest.raises(StorageUnavailable):
        store.apply(batch)


def test_a_read_while_the_database_is_down_is_storage_unavailable(store):
    with pytest.raises(StorageUnavailable):
        store.mailbox_head("alice")
