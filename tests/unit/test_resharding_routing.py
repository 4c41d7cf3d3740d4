"""Live resharding on the gateways' and the router's side, without Ray: the gateway's directory
taking a region's newer placement (gateway/shards.py ShardDirectory.apply), a batcher handing
Moved operations and those of a removed shard back for re-routing with their futures and deadlines
(gateway/batcher.py), and the router's steps in order (actors/resharding.py reshard) over fake
shard handles."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorUnavailableError

from fake_clock import FakeClock
from switchboard.actors import resharding
from switchboard.actors.ops import Outcome, SendMessage
from switchboard.actors.placement import Placement
from switchboard.actors.ring import Ring
from switchboard.actors.resharding import MAX_SHARDS_PER_REGION, ReshardSteps
from switchboard.errors import Code, Moved
from switchboard.gateway.batcher import ShardBatcher
from switchboard.gateway.shards import SHARD_INDEX_STRIDE, ShardDirectory
from switchboard.protocol import conversation_region
from switchboard.settings import Settings

# ---- the gateway's directory ---------------------------------------------------------------------

REGIONS = ("eu", "us")


def placement(region: str, count: int, epoch: int = 1) -> Placement:
    return Placement(region, "t", tuple(f"shard:{region}:{index}" for index in range(count)), epoch)


def directory() -> ShardDirectory:
    """eu with 2 shards and us with 3, each at epoch 1; a shard's handle is its name."""
    return ShardDirectory(Settings(region="eu", regions=REGIONS), [placement("eu", 2), placement("us", 3)], "eu",
                          get_handle=lambda name, namespace: name)


def handles_of(found: ShardDirectory, region: str) -> dict[int, str]:
    return {index: handle for index, handle in found.handles.items() if found.region_of(index) == region}


# An eu conversation whose sequencer is another shard on 4 shards than on 2.
MOVING_CID = next(cid for cid in (f"c_eu_{i:016d}" for i in range(1000))
                  if Ring(2).conversation_shard(cid) != Ring(4).conversation_shard(cid))


def test_a_newer_placement_replaces_the_regions_ring_and_handles_and_no_other_regions():
    found = directory()
    us_before = handles_of(found, "us")
    assert found.apply(placement("eu", 4, epoch=2))
    assert (found.epoch("eu"), found.rings["eu"].shard_count) == (2, 4)
    assert handles_of(found, "eu") == {index: f"shard:eu:{index}" for index in range(4)}
    assert handles_of(found, "us") == us_before == {SHARD_INDEX_STRIDE + i: f"shard:us:{i}" for i in range(3)}

    assert found.apply(placement("eu", 1, epoch=3))
    assert handles_of(found, "eu") == {0: "shard:eu:0"}  # the removed shards' indexes are gone
    assert list(found.indexes_of("eu")) == [0]
    assert handles_of(found, "us") == us_before


def test_a_placement_not_newer_than_the_one_held_or_of_an_unknown_region_is_ignored():
    found = directory()
    assert found.apply(placement("eu", 4, epoch=2))
    assert not found.apply(placement("eu", 1, epoch=2))
    assert not found.apply(placement("eu", 1, epoch=1))
    assert not found.apply(placement("ap", 5, epoch=9))
    assert (found.epoch("eu"), found.rings["eu"].shard_count, len(handles_of(found, "eu"))) == (2, 4, 4)
    assert "ap" not in found.placements


def test_conversations_looked_up_before_a_reshard_follow_the_new_ring_after_it():
    assert conversation_region(MOVING_CID, REGIONS, "us") == "eu"
    found = directory()
    assert found.for_conversation(MOVING_CID) == (Ring(2).conversation_shard(MOVING_CID),
                                                  f"shard:eu:{Ring(2).conversation_shard(MOVING_CID)}")
    found.apply(placement("eu", 4, epoch=2))
    index = Ring(4).conversation_shard(MOVING_CID)
    assert found.for_conversation(MOVING_CID) == (index, f"shard:eu:{index}")
    assert found.index_for(SendMessage(MOVING_CID, "alice", "k", "hi"), "eu") == index


# ---- the batcher ---------------------------------------------------------------------------------

class AnsweringShard:
    """Stands in for an actor handle: `submit.remote(operations, time_left_s)` records the call and
    answers answer(operation) for each operation (an exception: the call fails with it)."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[list, list[float]]] = []
        self.submit = self

    async def remote(self, operations, time_left_s):
        self.calls.append((list(operations), list(time_left_s)))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return [self.answer(operation) for operation in operations]


def echo(operation) -> Outcome:
    return Outcome(value={"echo": operation.client_msg_id})


MOVED = Moved("eu", 2)


def moved_or_echo(operation) -> Outcome:
    return Outcome.failed(MOVED) if operation.client_msg_id.startswith("moved") else echo(operation)


def send(key: str) -> SendMessage:
    return SendMessage("c_room", "alice", key, f"body {key}")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def make_batcher():
    made = []

    def make(shard, handed: list | None = None, clock=None) -> ShardBatcher:
        on_moved = None if handed is None else (lambda entry, error: handed.append((entry, error)))
        batcher = ShardBatcher(shard, 5.0, clock=clock or FakeClock(), on_moved=on_moved)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop()


async def test_operations_answered_moved_go_to_on_moved_unanswered_and_the_others_settle(make_batcher):
    clock, handed = FakeClock(), []
    batcher = make_batcher(AnsweringShard(moved_or_echo), handed, clock)
    moved, kept = batcher.enqueue(send("moved-a")), batcher.enqueue(send("b"))
    assert (await asyncio.wait_for(kept, 1.0)).value == {"echo": "b"}
    await settle()
    assert not moved.done()
    [((operation, future, deadline), error)] = handed
    assert (operation.client_msg_id, future, deadline, error) == ("moved-a", moved, clock.now + 5.0, MOVED)


async def test_without_on_moved_a_moved_answer_settles_as_it_came(make_batcher):
    batcher = make_batcher(AnsweringShard(moved_or_echo))
    outcome = await asyncio.wait_for(batcher.enqueue(send("moved-a")), 1.0)
    assert outcome.error is MOVED and outcome.error.code is Code.OVERLOADED


async def test_a_retired_batchers_shard_gone_failures_are_handed_to_on_moved_without_retrying(make_batcher):
    handed = []
    shard = AnsweringShard(ActorUnavailableError("the actor was stopped for good", None))
    batcher = make_batcher(shard, handed)
    batcher.retired = True
    futures = [batcher.enqueue(send(key)) for key in ("a", "b")]
    await settle()
    assert [(entry[0].client_msg_id, entry[1], error) for entry, error in handed] == \
        [("a", futures[0], None), ("b", futures[1], None)]
    assert not any(future.done() for future in futures)
    await asyncio.sleep(0.1)  # past the retry backoff: nothing was called again
    assert [[op.client_msg_id for op in operations] for operations, _ in shard.calls] == [["a"], ["b"]]


async def test_a_requeued_operation_keeps_its_future_and_its_deadline(make_batcher):
    clock = FakeClock()
    new_owner = AnsweringShard(echo)
    target = make_batcher(new_owner, clock=clock)
    # What a Moved answer hands over is queued again at the new owner's batcher.
    source = make_batcher(AnsweringShard(moved_or_echo), clock=clock)
    source.on_moved = lambda entry, error: target.requeue(*entry)
    future = source.enqueue(send("moved-a"))
    clock.advance(1.5)
    outcome = await asyncio.wait_for(future, 1.0)
    assert outcome.value == {"echo": "moved-a"}
    [(operations, time_left_s)] = new_owner.calls
    assert [op.client_msg_id for op in operations] == ["moved-a"]
    assert time_left_s == [pytest.approx(5.0 - 1.5)]


async def test_requeueing_an_answered_operation_calls_no_shard(make_batcher):
    shard = AnsweringShard(echo)
    batcher = make_batcher(shard)
    answered = asyncio.get_running_loop().create_future()
    answered.set_result(Outcome(value={}))
    batcher.requeue(send("a"), answered, 10**9)
    await settle()
    assert shard.calls == []


# ---- the router's steps ----------------------------------------------------------------------------

class Method:
    """An actor method of a fake shard: `.remote(*args)` logs (name, index, *args) when it runs and
    returns an awaitable of answer(*args) (raised if it is an exception); `fire_and_forget` ones
    log at once and return nothing, as the router does not await them."""

    def __init__(self, log: list, name: str, index: int, answer=None, fire_and_forget: bool = False):
        self.log, self.name, self.index, self.answer, self.fire_and_forget = log, name, index, answer, fire_and_forget

    def remote(self, *args):
        if self.fire_and_forget:
            self.log.append((self.name, self.index, *args))
            return None

        async def call():
            self.log.append((self.name, self.index, *args))
            result = self.answer(*args)
            if isinstance(result, BaseException):
                raise result
            return result
        return call()


def adopted(index: int):
    """Shard `index` lets go of index + 1 conversations and 10 x (index + 1) mailboxes."""
    return lambda count, epoch: {"adopted": True, "epoch": epoch, "conversations_moved": index + 1,
                                 "mailboxes_moved": 10 * (index + 1)}


class FakeShardHandle:
    def __init__(self, log: list, index: int, adopt=None):
        self.index = index
        self.stats = Method(log, "stats", index, lambda: {"index": index})
        self.adopt = Method(log, "adopt", index, adopt or adopted(index))
        self.announce_placement = Method(log, "announce", index, fire_and_forget=True)


EPOCH = 7


def recording_steps(log: list) -> ReshardSteps:
    def create_shards(indexes):
        log.append(("create", tuple(indexes)))
        return {index: FakeShardHandle(log, index) for index in indexes}

    async def advance(new_count, old_count):
        log.append(("advance", new_count, old_count))
        return EPOCH

    async def retire(index, handle):
        log.append(("retire", index))

    return ReshardSteps(create_shards=create_shards, advance=advance,
                        publish=lambda count, epoch: log.append(("publish", count, epoch)),
                        tell_other_regions=lambda: log.append(("tell_other_regions",)), retire=retire)


def steps_in_order(log: list) -> list[tuple[str, list[tuple]]]:
    """The log as its steps in order, each with what it was called with (sorted: the calls of one
    step, one per shard, may come in any order)."""
    steps: list[tuple[str, list[tuple]]] = []
    for name, *args in log:
        if steps and steps[-1][0] == name:
            steps[-1][1].append(tuple(args))
        else:
            steps.append((name, [tuple(args)]))
    return [(name, sorted(calls)) for name, calls in steps]


def fake_shards(log: list, count: int, **adopts) -> dict[int, FakeShardHandle]:
    return {index: FakeShardHandle(log, index, adopts.get(f"adopt{index}")) for index in range(count)}


def each(indexes, *args) -> list[tuple]:
    return [(index, *args) for index in indexes]


async def test_growing_creates_fences_adopts_publishes_then_announces_in_that_order():
    log = []
    shards = fake_shards(log, 2)
    result = await resharding.reshard("eu", shards, 4, recording_steps(log), grace_s=0)
    assert steps_in_order(log) == [
        ("create", [((2, 3),)]), ("stats", each([2, 3])), ("advance", [(4, 2)]),
        ("adopt", each(range(4), 4, EPOCH)), ("publish", [(4, EPOCH)]), ("announce", each(range(4))),
        ("tell_other_regions", [()])]
    assert (result["changed"], result["from"], result["to"], result["epoch"]) == (True, 2, 4, EPOCH)
    assert result["moved"] == {"conversations": 1 + 2 + 3 + 4, "mailboxes": 10 + 20 + 30 + 40}
    assert sorted(result["shards"]) == [0, 1, 2, 3]
    assert all(result["shards"][index] is shards[index] for index in (0, 1))


async def test_shrinking_retires_the_removed_shards_after_the_others_hear_of_it():
    log = []
    shards = fake_shards(log, 4)
    result = await resharding.reshard("eu", shards, 2, recording_steps(log), grace_s=0)
    assert steps_in_order(log) == [
        ("create", [((),)]), ("advance", [(2, 4)]), ("adopt", each(range(4), 2, EPOCH)),
        ("publish", [(2, EPOCH)]), ("announce", each(range(4))), ("tell_other_regions", [()]),
        ("retire", each([2, 3]))]
    assert result["shards"] == {0: shards[0], 1: shards[1]}


async def test_a_shard_whose_adopt_fails_is_left_out_of_the_figures_and_the_reshard_goes_on():
    log = []
    shards = fake_shards(log, 3, adopt1=lambda count, epoch: RuntimeError("restarting"))
    result = await resharding.reshard("eu", shards, 2, recording_steps(log), grace_s=0)
    assert result["changed"] and result["moved"] == {"conversations": 1 + 3, "mailboxes": 10 + 30}
    assert ("publish", 2, EPOCH) in log and ("announce", 1) in log and ("retire", 2) in log


async def test_the_same_shard_count_changes_nothing():
    log = []
    shards = fake_shards(log, 2)
    assert await resharding.reshard("eu", shards, 2, recording_steps(log), grace_s=0) == \
        {"changed": False, "shard_count": 2, "shards": shards}
    assert log == []


@pytest.mark.parametrize("count", [0, -1, MAX_SHARDS_PER_REGION + 1])
async def test_a_shard_count_out_of_range_is_refused_before_anything_starts(count):
    log = []
    with pytest.raises(ValueError):
        await resharding.reshard("eu", fake_shards(log, 2), count, recording_steps(log), grace_s=0)
    assert log == []
