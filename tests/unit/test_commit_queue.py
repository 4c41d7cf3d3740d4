"""The queue in front of a shard's writer thread (actors/commit_queue.py CommitQueue), with a real
Sequencer over the in-memory store and a fake clock shared by both: operations past their deadline
while queued are refused uncommitted, batches split at events_max, the queue bound sheds, health()
tells a stuck commit and a failing database (and recovers), and a bug in a commit fails only its
batch. The writer thread is held, where a test needs it busy, by a blocking job run on it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from switchboard.actors.commit_queue import FAILURE_MEMORY_S, STUCK_COMMIT_GRACE_S, CommitQueue
from switchboard.actors.ops import CreateConversation, SendMessage
from switchboard.actors.sequencer import COMMIT_FAILED_MESSAGE, DEADLINE_MESSAGE, Sequencer
from switchboard.errors import Code, Overloaded
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.store import StorageUnavailable
from fake_clock import FakeClock

CID = "c_room"
SEND_TIMEOUT_S = 5.0


class Harness:
    def __init__(self, members: int = 3, batch_max: int = 512, events_max: int | None = None,
                 queue_max: int = 1000):
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.sequencer = Sequencer(self.store, max_members=100)
        self.sequencer.clock = self.clock  # its deadlines are on the queue's clock
        self.members = [f"user{i}" for i in range(members)]
        self.sequencer.commit([CreateConversation(CID, self.members[0], tuple(self.members), "", "local")])
        self.committed: list[list] = []  # the events of each commit, as on_committed saw them
        self.queue = CommitQueue(self.sequencer, batch_max=batch_max, events_max=events_max,
                                 queue_max=queue_max, on_committed=self.committed.append, clock=self.clock)
        self.runner = asyncio.ensure_future(self.queue.run())

    def submit(self, operations: list, seconds_left: float = SEND_TIMEOUT_S) -> list[asyncio.Future]:
        return self.queue.submit(operations, [self.clock() + seconds_left] * len(operations))

    def hold_writer(self) -> tuple[threading.Event, asyncio.Future]:
        """Keep the writer thread busy until the returned event is set."""
        release = threading.Event()
        return release, self.queue.in_writer(release.wait, 5.0)

    def stored_keys(self) -> list[str]:
        return [m.client_msg_id for m in self.store.messages_page(CID, None, None, 1000)]

    async def close(self) -> None:
        self.runner.cancel()
        await asyncio.gather(self.runner, return_exceptions=True)
        self.queue.shutdown()


@pytest.fixture
async def make():
    made = []

    def build(**options) -> Harness:
        harness = Harness(**options)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        await harness.close()


def sends(count: int, start: int = 0) -> list[SendMessage]:
    return [SendMessage(CID, "user0", f"k{i}", f"message {i}") for i in range(start, start + count)]


async def answers(futures) -> list:
    return await asyncio.wait_for(asyncio.gather(*futures), 2.0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---- deadlines ----------------------------------------------------------------------------------

async def test_an_operation_whose_deadline_passed_while_queued_is_refused_and_never_committed(make):
    harness = make()
    release, held = harness.hold_writer()
    (first,) = harness.submit(sends(1), seconds_left=100.0)
    await settle()  # taken as a batch: waits for the writer
    (late,) = harness.submit(sends(1, start=1), seconds_left=1.0)
    harness.clock.advance(2.0)
    release.set()
    await held
    first_outcome, late_outcome = await answers([first, late])
    assert first_outcome.value["seq"] == 1
    assert isinstance(late_outcome.error, Overloaded) and late_outcome.error.message == DEADLINE_MESSAGE
    assert harness.queue.expired == 1
    assert harness.stored_keys() == ["k0"]


async def test_an_operation_with_no_time_to_commit_is_refused_at_once(make):
    harness = make()
    (outcome,) = await answers(harness.submit(sends(1), seconds_left=0.001))
    assert outcome.error.code is Code.OVERLOADED
    assert harness.stored_keys() == [] and harness.queue.commits == 0


# ---- batch bounds -------------------------------------------------------------------------------

async def test_a_batch_past_events_max_is_split_and_the_rest_commits_next_in_order(make):
    harness = make(members=9, events_max=25)  # a send reaches 9 mailboxes: 9 events (+1 in the estimate)
    outcomes = await answers(harness.submit(sends(5)))
    assert [o.value["seq"] for o in outcomes] == [1, 2, 3, 4, 5]
    assert [o.value["client_msg_id"] for o in outcomes] == [f"k{i}" for i in range(5)]
    assert harness.queue.commits == 3  # 2 + 2 + 1 sends
    assert [len(events) for events in harness.committed] == [18, 18, 9]
    assert harness.stored_keys() == [f"k{i}" for i in range(5)]
    assert harness.queue.committed_operations == 5


async def test_one_send_over_events_max_still_commits_alone(make):
    harness = make(members=9, events_max=5)
    outcomes = await answers(harness.submit(sends(2)))
    assert [o.value["seq"] for o in outcomes] == [1, 2]
    assert harness.queue.commits == 2


async def test_a_batch_closes_at_batch_max(make):
    harness = make(batch_max=2)
    outcomes = await answers(harness.submit(sends(5)))
    assert [o.value["seq"] for o in outcomes] == [1, 2, 3, 4, 5]
    assert harness.queue.commits == 3


async def test_past_queue_max_a_submit_is_shed_whole(make):
    harness = make(queue_max=3)
    release, held = harness.hold_writer()
    first = harness.submit(sends(1))
    await settle()  # taken: the queue is empty again
    queued = harness.submit(sends(2, start=1))
    shed = harness.submit(sends(2, start=3))  # 2 + 2 > 3: both refused, at once
    assert all(future.done() for future in shed)
    assert all(future.result().error.code is Code.OVERLOADED for future in shed)
    assert len(harness.queue) == 2
    release.set()
    await held
    assert [o.value["seq"] for o in await answers(first + queued)] == [1, 2, 3]
    assert harness.stored_keys() == ["k0", "k1", "k2"]


# ---- health -------------------------------------------------------------------------------------

async def test_health_reports_a_commit_running_too_long(make):
    harness = make()
    assert harness.queue.health(SEND_TIMEOUT_S) is None
    release, held = harness.hold_writer()
    (future,) = harness.submit(sends(1), seconds_left=100.0)
    await settle()
    harness.clock.advance(SEND_TIMEOUT_S + STUCK_COMMIT_GRACE_S - 0.1)
    assert harness.queue.health(SEND_TIMEOUT_S) is None
    harness.clock.advance(0.2)
    assert "running" in harness.queue.health(SEND_TIMEOUT_S)
    release.set()
    await held
    await answers([future])
    assert harness.queue.health(SEND_TIMEOUT_S) is None


async def test_health_reports_a_failed_commit_until_one_succeeds(make):
    harness = make()
    harness.store.fail_with = StorageUnavailable("connection refused")
    (failed,) = await answers(harness.submit(sends(1)))
    assert failed.error.code is Code.OVERLOADED and failed.error.message == COMMIT_FAILED_MESSAGE
    assert "database" in harness.queue.health(SEND_TIMEOUT_S)
    harness.clock.advance(1.0)
    assert "database" in harness.queue.health(SEND_TIMEOUT_S)

    harness.store.fail_with = None
    (ok,) = await answers(harness.submit(sends(1)))
    assert ok.value["seq"] == 1
    assert harness.queue.health(SEND_TIMEOUT_S) is None


async def test_a_failed_commit_is_forgotten_after_failure_memory(make):
    harness = make()
    harness.store.fail_with = StorageUnavailable("connection refused")
    await answers(harness.submit(sends(1)))
    harness.clock.advance(FAILURE_MEMORY_S + 0.1)
    assert harness.queue.health(SEND_TIMEOUT_S) is None  # with no traffic since, nothing says it is still down


# ---- bugs ---------------------------------------------------------------------------------------

async def test_a_commit_that_raises_is_answered_internal_and_the_queue_keeps_serving(make):
    harness = make()
    real_commit = harness.sequencer.commit
    calls = []

    def buggy_commit(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("a bug in the sequencer")
        return real_commit(*args, **kwargs)

    harness.sequencer.commit = buggy_commit
    outcomes = await answers(harness.submit(sends(2)))
    assert [o.error.code for o in outcomes] == [Code.INTERNAL, Code.INTERNAL]
    assert harness.committed == [[]]  # nothing fans out

    outcomes = await answers(harness.submit(sends(1, start=2)))
    assert outcomes[0].value["seq"] == 1
    assert harness.stored_keys() == ["k2"]
